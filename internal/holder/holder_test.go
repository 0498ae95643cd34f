package holder

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The fdinfo of a description that holds an OFD lock names the file and
// the range, as holdsAt reads them.
func TestFdinfoShowsTheLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const off = 1 << 62
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: off, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Fstat(int(f.Fd()), &st)
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	file := fmt.Sprintf("%s:%d", devString(st.Dev), st.Ino)
	if !holdsAt(string(info), file, off) {
		t.Fatalf("lock of %s at %d not found in:\n%s", file, int64(off), info)
	}
	if holdsAt(string(info), file, off+1) || holdsAt(string(info), file+"0", off) {
		t.Fatal("a lock found where there is none")
	}
	if Stopped(os.Getpid()) {
		t.Fatal("this running process reads as stopped")
	}
}
