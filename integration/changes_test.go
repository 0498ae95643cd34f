package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// objectExists looks in the directory archive of d.
func objectExists(d *testenv.Daemon, key string) bool {
	_, err := os.Stat(filepath.Join(strings.TrimPrefix(d.Archive, "file://"), key))
	return err == nil
}

func TestWriteTruncateDeleteStubs(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for _, n := range []string{"w", "t", "del", "o"} {
		os.WriteFile(d.M(n), data, 0o644)
	}
	d.MustCLI("migrate", d.M("w"), d.M("t"), d.M("del"), d.M("o"))
	keys := map[string]string{}
	for _, n := range []string{"w", "t", "del", "o"} {
		keys[n] = state(t, d, n).Object
	}

	// Write into the middle of a stub: the rest must be the old data.
	f, err := os.OpenFile(d.M("w"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("HELLO"), 1000); err != nil {
		t.Fatalf("write to stub: %v", err)
	}
	f.Close()
	want := bytes.Clone(data)
	copy(want[1000:], "HELLO")
	if got, _ := os.ReadFile(d.M("w")); !bytes.Equal(got, want) {
		t.Fatal("write to stub: wrong contents")
	}
	if e := state(t, d, "w"); e.State != "resident" {
		t.Fatalf("written stub: %+v", e)
	}
	testenv.WaitFor(t, "stale object of w deleted", 20*time.Second, func() bool { return !objectExists(d, keys["w"]) })

	// Truncate a stub (by path): the prefix survives.
	if err := os.Truncate(d.M("t"), 100); err != nil {
		t.Fatalf("truncate stub: %v", err)
	}
	if got, _ := os.ReadFile(d.M("t")); !bytes.Equal(got, data[:100]) {
		t.Fatal("truncate stub: wrong contents")
	}

	// Open with O_TRUNC.
	if err := os.WriteFile(d.M("o"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(d.M("o")); string(got) != "new" {
		t.Fatalf("O_TRUNC rewrite: %q", got)
	}

	// Delete a stub: its object goes, durably.
	if err := os.Remove(d.M("del")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "object of deleted stub destroyed", 20*time.Second, func() bool { return !objectExists(d, keys["del"]) })
	if _, err := os.Stat(d.M("del")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted stub still visible: %v", err)
	}
}

// A DESTROY queued before a kill -9 is carried out after the restart.
func TestDestroySurvivesRestart(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	os.WriteFile(d.M("f"), []byte("some data"), 0o644)
	d.MustCLI("migrate", d.M("f"))
	key := state(t, d, "f").Object
	d.Kill9()
	d.Start() // over the dead mount
	if err := os.Remove(d.M("f")); err != nil {
		t.Fatal(err)
	}
	d.Kill9()
	// Whatever happened before the kill, after a restart the object is gone.
	d.Start()
	testenv.WaitFor(t, "destroy after restart", 20*time.Second, func() bool { return !objectExists(d, key) })
}

func TestPremigrateThenModify(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	os.WriteFile(d.M("p"), []byte("version one"), 0o644)
	d.MustCLI("migrate", "--premigrate", d.M("p"))
	e := state(t, d, "p")
	if e.State != "premigrated" || e.ResidentBytes != e.Size {
		t.Fatalf("after premigrate: %+v", e)
	}
	f, _ := os.OpenFile(d.M("p"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(" and two")
	f.Close()
	if e2 := state(t, d, "p"); e2.State != "resident" {
		t.Fatalf("modified premigrated file: %+v", e2)
	}
	testenv.WaitFor(t, "stale copy deleted", 20*time.Second, func() bool { return !objectExists(d, e.Object) })
	d.MustCLI("migrate", d.M("p"))
	testenv.DropCaches()
	if got, _ := os.ReadFile(d.M("p")); string(got) != "version one and two" {
		t.Fatalf("after re-migration: %q", got)
	}
}

// A corrupted or missing archive object gives EIO, never wrong bytes, and
// the file stays a stub.
func TestCorruptAndMissingObjects(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	for _, n := range []string{"corrupt", "missing", "bigcorrupt"} {
		size := int64(5000)
		if n == "bigcorrupt" {
			size = 40 << 20 // external checksums, region recall
		}
		writeRandom(t, d.M(n), size)
	}
	d.MustCLI("migrate", d.M("corrupt"), d.M("missing"), d.M("bigcorrupt"))
	arch := strings.TrimPrefix(d.Archive, "file://")
	flip := func(key string, off int64) {
		p := filepath.Join(arch, key)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		f.ReadAt(b, off)
		b[0] ^= 0x40
		f.WriteAt(b, off)
		f.Close()
	}
	flip(state(t, d, "corrupt").Object, 100)
	flip(state(t, d, "bigcorrupt").Object, 30<<20)
	os.Remove(filepath.Join(arch, state(t, d, "missing").Object))
	testenv.DropCaches()
	for _, n := range []string{"corrupt", "missing"} {
		_, err := os.ReadFile(d.M(n))
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("%s: read gave %v, want EIO", n, err)
		}
		if e := state(t, d, n); e.State != "migrated" {
			t.Fatalf("%s: %+v", n, e)
		}
	}
	// The good regions of a large file still read; the bad one is EIO.
	f, _ := os.Open(d.M("bigcorrupt"))
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("good region: %v", err)
	}
	if _, err := f.ReadAt(buf, 30<<20); !errors.Is(err, syscall.EIO) {
		t.Fatalf("bad region: %v, want EIO", err)
	}
	for _, n := range []string{"corrupt", "missing", "bigcorrupt"} {
		if !strings.Contains(d.Log(), "file="+n) {
			t.Errorf("log does not name %s", n)
		}
	}
}

// A malformed stub record gives EIO for that file, and the daemon lives on.
func TestMalformedRecord(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	os.WriteFile(d.M("bad"), []byte("x"), 0o644)
	os.WriteFile(d.M("good"), []byte("fine"), 0o644)
	if err := unix.Setxattr(d.B("bad"), stub.XattrName, []byte("CFSR\x01\x02garbage"), 0); err != nil {
		t.Fatal(err)
	}
	testenv.DropCaches()
	if _, err := os.ReadFile(d.M("bad")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("malformed record: %v, want EIO", err)
	}
	if got, err := os.ReadFile(d.M("good")); err != nil || string(got) != "fine" {
		t.Fatalf("daemon hurt by a bad record: %v", err)
	}
	if _, _, err := d.CLI("migrate", d.M("bad")); err == nil {
		t.Fatal("migrate of a file with a malformed record succeeded")
	}
	if !strings.Contains(d.Log(), "bad") {
		t.Error("log does not name the file")
	}
}

func TestRecordsHiddenAndPosixOps(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	p := d.M("f")
	os.WriteFile(p, []byte("data"), 0o640)
	d.MustCLI("migrate", p)
	sz, _ := unix.Listxattr(p, make([]byte, 1024))
	if sz != 0 {
		t.Fatalf("listxattr shows %d bytes of attributes on a stub", sz)
	}
	if _, err := unix.Getxattr(p, stub.XattrName, make([]byte, 4096)); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("getxattr of the record: %v", err)
	}
	if err := unix.Setxattr(p, stub.XattrName, []byte("x"), 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("setxattr of the record: %v", err)
	}
	if err := unix.Setxattr(p, "user.mine", []byte("v"), 0); err != nil {
		t.Fatalf("user xattr: %v", err)
	}
	var st syscall.Stat_t
	syscall.Stat(p, &st)
	if st.Size != 4 || st.Mode&0o777 != 0o640 {
		t.Fatalf("stub attributes: size %d mode %o", st.Size, st.Mode&0o777)
	}
	// stat, ls and find never recall.
	os.ReadDir(d.Mountpoint)
	syscall.Stat(p, &st)
	if e := state(t, d, "f"); e.State != "migrated" {
		t.Fatalf("stat recalled the file: %+v", e)
	}
	// utimes on a stub keeps it a stub that still releases cleanly later.
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	// rename, hard link, symlink, chmod.
	if err := os.Rename(p, d.M("g")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(d.M("g"), d.M("h")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("g", d.M("s")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(d.M("g"), 0o600)
	os.Remove(d.M("h")) // one link left: no destroy
	testenv.DropCaches()
	if got, err := os.ReadFile(d.M("s")); err != nil || string(got) != "data" {
		t.Fatalf("read via symlink after rename: %q %v", got, err)
	}
	fi, _ := os.Stat(d.M("g"))
	if !fi.ModTime().Equal(mt) {
		t.Fatalf("recall changed mtime: %v", fi.ModTime())
	}
	d.MustCLI("migrate", d.M("g"))
	if e := state(t, d, "g"); e.State != "migrated" {
		t.Fatalf("re-migrate after utimes: %+v", e)
	}
	// Sparse file round trip.
	sf, _ := os.Create(d.M("sparse"))
	sf.WriteAt([]byte("end"), 10<<20)
	sf.Close()
	d.MustCLI("migrate", d.M("sparse"))
	testenv.DropCaches()
	got, _ := os.ReadFile(d.M("sparse"))
	if len(got) != 10<<20+3 || string(got[10<<20:]) != "end" || bytes.Count(got[:10<<20], []byte{0}) != 10<<20 {
		t.Fatal("sparse file read back wrong")
	}
}

// A file renamed while its READ event waits in the session queue is still
// recalled: events name files by handle, not only by path.
func TestRenameWhileRecallQueued(t *testing.T) {
	m := testenv.StartMinIO(t)
	d := testenv.NewDaemon(t, m.Bucket(t, "hsm"), m.EnvList(), "--workers", "1", "--event-timeout", "2m")
	d.Start()
	writeRandom(t, d.M("first"), 1<<20)
	want := writeRandom(t, d.M("second"), 1<<20+3)
	d.MustCLI("migrate", d.M("first"), d.M("second"))
	testenv.DropCaches()

	m.Pause() // the one worker hangs on the first recall; the second event waits
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	go os.ReadFile(d.M("first"))
	time.Sleep(300 * time.Millisecond)
	type result struct {
		sum [32]byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := os.ReadFile(d.M("second"))
		done <- result{sha256.Sum256(b), err}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := os.Rename(d.M("second"), d.M("renamed")); err != nil {
		t.Fatal(err)
	}
	m.Resume()
	resumed = true
	select {
	case r := <-done:
		if r.err != nil || r.sum != want {
			t.Fatalf("reader of a file renamed during its recall: err %v, right bytes %v", r.err, r.sum == want)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("reader still blocked 60s after the archive came back")
	}
	if e := stateAfterRead(t, d, "renamed"); e.State != "premigrated" {
		t.Fatalf("renamed file after its recall: %+v", e)
	}
}

// Passthrough and other opens of one file, interleaved: a read-write
// handle closed while a passthrough handle stays open must not break the
// next passthrough open (go-fuse would drop the inode's backing file).
func TestPassthroughWithOtherOpens(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	want := writeRandom(t, d.M("f"), 1<<20)
	p1, err := os.Open(d.M("f")) // passthrough
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	rw, err := os.OpenFile(d.M("f"), os.O_RDWR, 0) // not passthrough
	if err != nil {
		t.Fatal(err)
	}
	rw.Close()
	time.Sleep(100 * time.Millisecond) // let its release reach the daemon
	for i := range 3 {
		p2, err := os.Open(d.M("f"))
		if err != nil {
			t.Fatalf("passthrough open %d after a read-write handle closed: %v", i, err)
		}
		b, err := io.ReadAll(p2)
		p2.Close()
		if err != nil || sha256.Sum256(b) != want {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	// A premigrated file read in passthrough, then opened for writing: its
	// record goes (the archive copy is stale), and the write lands.
	d.MustCLI("migrate", "--premigrate", d.M("f"))
	p3, err := os.Open(d.M("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Close()
	w, err := os.OpenFile(d.M("f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("write open of a premigrated file read in passthrough: %v", err)
	}
	if _, err := w.WriteAt([]byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if e := state(t, d, "f"); e.State != "resident" {
		t.Fatalf("after a write: %+v", e)
	}
	got := make([]byte, 3)
	p3.ReadAt(got, 0)
	if string(got) != "new" {
		t.Fatalf("passthrough reader sees %q after the write", got)
	}
}
