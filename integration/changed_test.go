package integration

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// pausedDaemon starts a daemon whose failpoint point pauses at its first
// hit; the test resumes it by removing the marker that paused() returns.
func pausedDaemon(t *testing.T, point string, extra ...string) (d *testenv.Daemon, marker string) {
	dir := t.TempDir()
	d = testenv.NewDaemon(t, "", []string{"CASCADEFS_FAILPOINTS=" + point + "=pause@1", "CASCADEFS_FAILPOINT_DIR=" + dir}, extra...)
	d.Start()
	return d, filepath.Join(dir, point+".paused")
}

func waitForFile(t *testing.T, p string) {
	t.Helper()
	testenv.WaitFor(t, "failpoint "+filepath.Base(p), 20*time.Second, func() bool { _, err := os.Stat(p); return err == nil })
}

// cliAsync runs an admin command in the background.
func cliAsync(d *testenv.Daemon, args ...string) <-chan cliResult {
	done := make(chan cliResult, 1)
	go func() {
		o, e, err := d.CLI(args...)
		done <- cliResult{err, o + e}
	}()
	return done
}

type cliResult struct {
	err error
	out string
}

// overwriteSameSize changes bytes in place through the mount and puts the
// mtime back, as a writer hiding its change would.
func overwriteSameSize(t *testing.T, p string, f *os.File) []byte {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	patch := make([]byte, 4096)
	rand.Read(patch)
	if _, err := f.WriteAt(patch, 4096); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, time.Now(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(p); st2.Size() != st.Size() || !st2.ModTime().Equal(st.ModTime()) {
		t.Fatalf("the trick failed: size %d->%d, mtime %v->%v", st.Size(), st2.Size(), st.ModTime(), st2.ModTime())
	}
	return patch
}

// A writer that rewrites bytes during an upload and restores the mtime
// with futimens keeps size and mtime: the commit must still refuse the
// stale copy, and a new migration must archive the new bytes.
func TestChangeHiddenByMtimeRestoreAborts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		openedBy string // "before": the writer's handle is open across the upload
	}{{"opened-during-upload", "during"}, {"open-across-upload", "before"}, {"closed-before-commit", "before-closed"}} {
		t.Run(tc.name, func(t *testing.T) {
			d, marker := pausedDaemon(t, failpoint.MigrateAfterUpload)
			writeRandom(t, d.M("f"), 4<<20)
			var w *os.File
			var err error
			if tc.openedBy != "during" {
				if w, err = os.OpenFile(d.M("f"), os.O_WRONLY, 0); err != nil {
					t.Fatal(err)
				}
			}
			done := cliAsync(d, "migrate", d.M("f"))
			waitForFile(t, marker) // uploaded, not committed
			if w == nil {
				if w, err = os.OpenFile(d.M("f"), os.O_WRONLY, 0); err != nil {
					t.Fatal(err)
				}
			}
			overwriteSameSize(t, d.M("f"), w)
			if tc.openedBy != "before" {
				w.Close()
			}
			os.Remove(marker)
			res := <-done
			if !strings.Contains(res.out, "changed") && !strings.Contains(res.out, "open for writing") {
				t.Errorf("migrate of a file changed during its upload (err %v): %s", res.err, res.out)
			}
			if tc.openedBy == "before" {
				w.Close()
			}
			if s := state(t, d, "f").State; s != "resident" {
				t.Fatalf("file left %s after an aborted commit", s)
			}
			want, _ := os.ReadFile(d.B("f"))
			testenv.WaitFor(t, "the stale upload destroyed", 20*time.Second, func() bool { return len(d.ArchiveObjects(t)) == 0 })

			// Migrated now, the file reads back its new bytes from the archive.
			d.MustCLI("migrate", d.M("f"))
			testenv.DropCaches()
			got, err := os.ReadFile(d.M("f"))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back after migration: %v, equal %v", err, bytes.Equal(got, want))
			}
		})
	}
}

// A writer on another node, open across a premigration (the owner cannot
// see its handle), rewrites bytes and restores the mtime: the premigrated
// copy must not be released; it is dropped as stale and the new bytes are
// copied.
func TestPremigratedChangedOnAnotherNodeIsNotReleased(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	writeRandom(t, n1.M("f"), 4<<20)
	w, err := os.OpenFile(n2.M("f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c.MustCLI("migrate", "--premigrate", n1.M("f"))
	if s := clusterState(t, c, n1, "f"); s != "premigrated" {
		t.Fatalf("state %s after premigrate", s)
	}
	overwriteSameSize(t, n2.M("f"), w)
	w.Close()
	want, _ := os.ReadFile(c.B("f"))
	c.MustCLI("migrate", n1.M("f"))
	testenv.DropCaches()
	for _, n := range []*testenv.Node{n1, n2} {
		if got, err := os.ReadFile(n.M("f")); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s reads back other bytes than were written (%v): the stale copy was released", n.Name, err)
		}
	}
}

// Release looks at the archive copy again just before the punch: a
// checksum object damaged after the premigration stops it, and the file
// keeps its data.
func TestReleaseReverifiesArchiveCopy(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	sum := writeRandom(t, d.M("big"), 65<<20) // past the inline checksums: a checksum object
	d.MustCLI("migrate", "--premigrate", d.M("big"))
	key := state(t, d, "big").Object
	sums := filepath.Join(strings.TrimPrefix(d.Archive, "file://"), key+".sums")
	b, err := os.ReadFile(sums)
	if err != nil {
		t.Fatalf("no checksum object: %v", err)
	}
	b[0] ^= 0xff
	if err := os.WriteFile(sums, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.CLI("migrate", d.M("big")); err == nil {
		t.Fatal("released a file whose checksum object is damaged")
	}
	if s := state(t, d, "big").State; s != "premigrated" {
		t.Fatalf("state %s after a refused release", s)
	}
	testenv.DropCaches()
	if sumFile(t, d.M("big")) != sum {
		t.Fatal("data lost")
	}
}

// An open that waited for a release decides its I/O mode after the
// release, not before: decided before (the file premigrated, all data
// local: passthrough), it read the holes the release punched as zeros.
func TestOpenHeldByReleaseReadsRightBytes(t *testing.T) {
	d, marker := pausedDaemon(t, failpoint.MigrateReleaseHeld)
	want := writeRandom(t, d.M("f"), 4<<20)
	d.MustCLI("migrate", "--premigrate", d.M("f"))
	done := cliAsync(d, "migrate", d.M("f"))
	waitForFile(t, marker) // new opens are held; the record still says premigrated
	read := make(chan [32]byte, 1)
	go func() { read <- sumFile(t, d.M("f")) }() // opens now, waits for the release
	time.Sleep(200 * time.Millisecond)
	os.Remove(marker)
	if res := <-done; res.err != nil || !strings.Contains(res.out, "migrated 1 file") {
		t.Fatalf("migrate: %v %s", res.err, res.out)
	}
	if got := <-read; got != want {
		t.Fatal("a reader held by a release read other bytes (zeros where the release punched)")
	}
	testenv.WaitFor(t, "the held reader's bytes to come from a recall", 20*time.Second, func() bool { return strings.Contains(d.Log(), "msg=recalled") })
}

// An admin's recall reports a file recalled once its record says so: the
// commit (sync, fence, record), paused here before the record, holds the
// recall, and the state right after it returns is premigrated.
func TestAdminRecallReturnsOnceCommitted(t *testing.T) {
	d, marker := pausedDaemon(t, failpoint.RecallBeforeRecord)
	want := writeRandom(t, d.M("f"), 8<<20)
	d.MustCLI("migrate", d.M("f"))
	testenv.DropCaches()
	done := cliAsync(d, "recall", d.M("f"))
	waitForFile(t, marker)
	select {
	case r := <-done:
		t.Fatalf("the recall returned before the commit: %v\n%s", r.err, r.out)
	case <-time.After(500 * time.Millisecond):
	}
	os.Remove(marker)
	if r := <-done; r.err != nil {
		t.Fatalf("recall: %v\n%s", r.err, r.out)
	}
	if e := state(t, d, "f"); e.State != "premigrated" || e.ResidentBytes != 8<<20 {
		t.Fatalf("right after the recall: %+v", e)
	}
	if sumFile(t, d.M("f")) != want {
		t.Fatal("wrong bytes")
	}
}
