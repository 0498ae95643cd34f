package daemon

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The control socket appears in its directory already restricted to root:
// it is never created under its final name (inotify would see IN_CREATE),
// only renamed there.
func TestControlSocketNeverLoose(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "fs.sock")
	ln, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&0o777 != 0o600 || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Fatalf("socket mode %o, %v", st.Mode, err)
	}
	buf := make([]byte, 64<<10)
	n, _ := unix.Read(in, buf)
	movedIn := false
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		mask := binary.LittleEndian.Uint32(buf[off+4:])
		nameLen := int(binary.LittleEndian.Uint32(buf[off+12:]))
		name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+nameLen], "\x00"))
		if name == "fs.sock" {
			if mask&unix.IN_CREATE != 0 || mask&unix.IN_ATTRIB != 0 {
				t.Fatalf("the socket was created or changed under its final name (mask %x)", mask)
			}
			movedIn = movedIn || mask&unix.IN_MOVED_TO != 0
		}
		off += unix.SizeofInotifyEvent + nameLen
	}
	if !movedIn {
		t.Fatal("the socket did not arrive by rename")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left in the run directory: %v", ents)
	}
}

// A run directory that others can write to is refused: they could put a
// socket of their own in place of the daemon's.
func TestControlSocketRefusesOpenRunDir(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	if _, err := ListenControl(filepath.Join(dir, "fs.sock")); err == nil {
		t.Fatal("a world-writable run directory was accepted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left in the run directory: %v", ents)
	}
}
