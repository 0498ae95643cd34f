package stub

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"golang.org/x/sys/unix"
)

// A handle reaches the file after a rename, and says ESTALE once it is gone.
func TestHandleFollowsRename(t *testing.T) {
	testenv.RequireRoot(t) // open_by_handle_at needs CAP_DAC_READ_SEARCH
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("data"), 0o644)
	f, _ := os.Open(filepath.Join(dir, "a"))
	h, err := HandleOf(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(dir, "a"), filepath.Join(dir, "b"))
	root, _ := os.Open(dir)
	defer root.Close()
	fd, err := OpenHandle(int(root.Fd()), h, unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	n, _ := unix.Read(fd, buf)
	unix.Close(fd)
	if string(buf[:n]) != "data" {
		t.Fatalf("read %q through the handle", buf[:n])
	}
	os.Remove(filepath.Join(dir, "b"))
	if _, err := OpenHandle(int(root.Fd()), h, unix.O_RDONLY); !errors.Is(err, unix.ESTALE) {
		t.Fatalf("handle of a deleted file: %v, want ESTALE", err)
	}
	if _, err := OpenHandle(int(root.Fd()), []byte{1, 2}, unix.O_RDONLY); !errors.Is(err, ErrBadHandle) {
		t.Fatalf("short handle: %v", err)
	}
}

// The scan's ways of reading a record by name agree with ReadRecord, with
// getxattrat and without it.
func TestReadRecordByName(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "stub"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	os.WriteFile(filepath.Join(dir, "plain"), []byte("x"), 0o644)
	rec := &Record{State: Premigrated, Key: "fs/1/2", Size: 1, ChunkSize: DefaultChunkSize, SumsCount: 1, Sums: []uint32{7}}
	if err := WriteRecord(int(f.Fd()), rec); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, fallback := range []bool{false, true} {
		noGetxattrat.Store(fallback)
		got, err := ReadRecordIn(int(d.Fd()), "stub")
		if err != nil || got == nil || got.Key != rec.Key || got.Sums[0] != 7 {
			t.Fatalf("fallback=%v: record %+v, %v", fallback, got, err)
		}
		if got, err := ReadRecordIn(int(d.Fd()), "plain"); got != nil || err != nil {
			t.Fatalf("fallback=%v: file without a record: %+v, %v", fallback, got, err)
		}
	}
	noGetxattrat.Store(false)
}

// The commit lock excludes a removal (shared) while a commit (exclusive)
// holds it, across open file descriptions as across nodes.
func TestCommitLockExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	unlock, err := LockCommit(int(w.Fd()), false)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		u, err := LockCommit(int(r.Fd()), true)
		if err == nil {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a removal took the lock while a commit held it")
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	<-got
}

// Two holders through one descriptor exclude each other too (a recall
// stream and a commit of one file share their descriptor).
func TestCommitLockExcludesOnOneDescriptor(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	shared, err := LockCommit(int(f.Fd()), true)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		if u, err := LockCommit(int(f.Fd()), false); err == nil {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("an exclusive holder got the lock while a shared one held it through the same descriptor")
	case <-time.After(100 * time.Millisecond):
	}
	shared()
	<-got
}
