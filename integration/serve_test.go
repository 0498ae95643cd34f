package integration

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
)

// A reader through the mount is served from the recall's memory, from the
// chunks the GET brought and the checksums passed, while their write to
// the backing file is held (paused at recall-before-write). The backing
// file holds none of those bytes yet and the stub stays migrated. A kill
// -9 then loses nothing: the restarted daemon recalls the bytes again.
func TestReaderServedBeforeTheWrite(t *testing.T) {
	dir := t.TempDir()
	d := testenv.NewDaemon(t, "", []string{"CASCADEFS_FAILPOINTS=" + failpoint.RecallBeforeWrite + "=pause", "CASCADEFS_FAILPOINT_DIR=" + dir})
	d.Start()
	const size = 16 << 20
	want := make([]byte, size)
	rand.Read(want)
	must(t, os.WriteFile(d.M("f"), want, 0o644))
	d.MustCLI("migrate", d.M("f"))
	testenv.DropCaches()

	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(d.M("f"))
		if err != nil {
			got <- nil
			return
		}
		defer f.Close()
		b := make([]byte, 1<<20)
		if n, err := f.ReadAt(b, 3<<20); err != nil || n != len(b) {
			got <- nil
			return
		}
		got <- b
	}()
	select {
	case b := <-got:
		if !bytes.Equal(b, want[3<<20:4<<20]) {
			t.Fatal("the reader did not get the right bytes")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reader waited for the write of its bytes (held at recall-before-write)")
	}
	waitForFile(t, filepath.Join(dir, failpoint.RecallBeforeWrite+".paused"))
	f, err := os.Open(d.B("f"))
	if err != nil {
		t.Fatal(err)
	}
	next, err := stub.NextData(int(f.Fd()), 0, size)
	f.Close()
	if err != nil || next < size {
		t.Fatalf("the backing file holds data at %d (err %v) while every recall write is held", next, err)
	}
	if s := state(t, d, "f"); s.State != "migrated" || s.ResidentBytes != 0 {
		t.Fatalf("while the writes are held: %+v", s)
	}

	d.Kill9()
	d.Env = nil
	d.Start()
	testenv.DropCaches()
	b, err := os.ReadFile(d.M("f"))
	if err != nil || !bytes.Equal(b, want) {
		t.Fatalf("after the kill the file reads %d bytes (err %v), not the data", len(b), err)
	}
	testenv.WaitFor(t, "the file recalled whole", 20*time.Second, func() bool { return state(t, d, "f").State == "premigrated" })
}
