package integration

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"golang.org/x/sys/unix"
)

// Paths near PATH_MAX through the mount (pjdfstest's */03 cases): the
// kernel takes a path of PATH_MAX-1 bytes relative to a directory inside
// the mount, which the backing root's own prefix pushes past PATH_MAX in
// the daemon. Every kind of call must work there as on ext4, and a path
// one byte longer must get ENAMETOOLONG from the kernel.
func TestPathsNearPathMax(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	top, err := unix.Open(d.M(""), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(top)
	// Directories of 127-byte names down to PATH_MAX-1 bytes in all.
	comp := strings.Repeat("d", 127)
	var dirs []string
	rel := ""
	for unix.PathMax-2-len(rel) > 255 { // what is left for the file name
		if rel == "" {
			rel = comp
		} else {
			rel += "/" + comp
		}
		dirs = append(dirs, rel)
		if err := unix.Mkdirat(top, rel, 0o755); err != nil {
			t.Fatalf("mkdir at %d bytes: %v", len(rel), err)
		}
	}
	name := strings.Repeat("f", unix.PathMax-2-len(rel)) // rel/name: PATH_MAX-1 bytes
	file := rel + "/" + name
	if len(file) != unix.PathMax-1 || len(name) > 255 {
		t.Fatalf("test setup: %d bytes, name %d", len(file), len(name))
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s (%d bytes): %v", what, len(file), err)
		}
	}
	fd, err := unix.Openat(top, file, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o640)
	must("create", err)
	want := []byte("bytes at the bottom\n")
	_, err = unix.Write(fd, want)
	must("write", err)
	must("ftruncate", unix.Ftruncate(fd, int64(len(want))))
	unix.Close(fd)
	var st unix.Stat_t
	must("stat", unix.Fstatat(top, file, &st, unix.AT_SYMLINK_NOFOLLOW))
	if st.Size != int64(len(want)) || st.Mode&0o777 != 0o640 {
		t.Fatalf("stat: size %d mode %o", st.Size, st.Mode&0o777)
	}
	must("chmod", unix.Fchmodat(top, file, 0o600, 0))
	must("chown", unix.Fchownat(top, file, 65534, 65534, unix.AT_SYMLINK_NOFOLLOW))
	must("utimes", unix.UtimesNanoAt(top, file, []unix.Timespec{{Sec: 1000}, {Sec: 2000}}, unix.AT_SYMLINK_NOFOLLOW))
	must("stat", unix.Fstatat(top, file, &st, unix.AT_SYMLINK_NOFOLLOW))
	if st.Mode&0o777 != 0o600 || st.Uid != 65534 || st.Mtim.Sec != 2000 {
		t.Fatalf("after chmod, chown, utimes: mode %o uid %d mtime %d", st.Mode&0o777, st.Uid, st.Mtim.Sec)
	}
	// truncate(2) and the xattr calls take a path: through our own
	// descriptor of the deepest directory.
	deep, err := unix.Openat(top, rel, unix.O_PATH|unix.O_DIRECTORY, 0)
	must("open the deepest directory", err)
	defer unix.Close(deep)
	viaDeep := fmt.Sprintf("/proc/self/fd/%d/%s", deep, name)
	must("truncate", unix.Truncate(viaDeep, int64(len(want))))
	must("setxattr", unix.Lsetxattr(viaDeep, "user.test", []byte("v"), 0))
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(viaDeep, "user.test", buf); err != nil || string(buf[:n]) != "v" {
		t.Fatalf("getxattr: %q %v", buf[:n], err)
	}
	if n, err := unix.Llistxattr(viaDeep, buf); err != nil || !bytes.Contains(buf[:n], []byte("user.test")) {
		t.Fatalf("listxattr: %q %v", buf[:n], err)
	}
	must("removexattr", unix.Lremovexattr(viaDeep, "user.test"))
	fd, err = unix.Openat(top, file, unix.O_RDONLY, 0)
	must("open", err)
	got := make([]byte, 100)
	n, _ := unix.Read(fd, got)
	unix.Close(fd)
	if !bytes.Equal(got[:n], want) {
		t.Fatalf("read back %q", got[:n])
	}
	other := rel + "/" + strings.Repeat("g", len(name))
	must("link", unix.Linkat(top, file, top, other, 0))
	must("unlink", unix.Unlinkat(top, other, 0))
	must("rename", unix.Renameat(top, file, top, other))
	must("rename back", unix.Renameat(top, other, top, file))
	must("symlink", unix.Symlinkat("target", top, other))
	if n, err := unix.Readlinkat(top, other, buf); err != nil || string(buf[:n]) != "target" {
		t.Fatalf("readlink: %q %v", buf[:n], err)
	}
	must("unlink the symlink", unix.Unlinkat(top, other, 0))
	must("mkfifo", unix.Mknodat(top, other, unix.S_IFIFO|0o644, 0))
	must("unlink the fifo", unix.Unlinkat(top, other, 0))
	dfd, err := unix.Openat(top, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must("opendir", err)
	ents := make([]byte, 8192)
	n, err = unix.Getdents(dfd, ents)
	unix.Close(dfd)
	if err != nil || !bytes.Contains(ents[:n], []byte(name)) {
		t.Fatalf("readdir of the deepest directory: %v", err)
	}
	if err := unix.Mkdirat(top, file+"x", 0o755); !errors.Is(err, unix.ENAMETOOLONG) {
		t.Fatalf("mkdir of PATH_MAX bytes: %v, want ENAMETOOLONG", err)
	}
	must("unlink", unix.Unlinkat(top, file, 0))
	for i := len(dirs) - 1; i >= 0; i-- {
		must("rmdir", unix.Unlinkat(top, dirs[i], unix.AT_REMOVEDIR))
	}
}

// New files, directories and fifos get exactly the mode they were made
// with (after the caller's umask): the daemon's own umask took group and
// other write away, so a directory made 0777 for everyone was 0755.
func TestCreatedModesAreExact(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	old := unix.Umask(0)
	defer unix.Umask(old)
	fd, err := unix.Open(d.M("f"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := unix.Mkdir(d.M("d"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(d.M("p"), 0o622); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{"f": 0o666, "d": 0o777, "p": 0o622} {
		for _, p := range []string{d.M(name), d.B(name)} {
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil || st.Mode&0o7777 != want {
				t.Errorf("%s: mode %o (%v), want %o", p, st.Mode&0o7777, err, want)
			}
		}
	}
}
