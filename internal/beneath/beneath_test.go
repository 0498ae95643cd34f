package beneath

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// tree makes root/{a/f, link -> outside, a/flink -> outside/x} and outside/x.
func tree(t *testing.T) (*Root, string) {
	t.Helper()
	top := t.TempDir()
	root, outside := filepath.Join(top, "root"), filepath.Join(top, "outside")
	for _, d := range []string{filepath.Join(root, "a"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "a", "f"), []byte("in"), 0o644)
	os.WriteFile(filepath.Join(outside, "x"), []byte("out"), 0o644)
	os.Symlink(outside, filepath.Join(root, "link"))
	os.Symlink(filepath.Join(outside, "x"), filepath.Join(root, "a", "flink"))
	os.Symlink("../../outside", filepath.Join(root, "a", "rel"))
	r, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, outside
}

func TestRefusesWhatLeavesTheTree(t *testing.T) {
	for _, walk := range []bool{false, true} {
		noOpenat2.Store(walk)
		r, _ := tree(t)
		cases := map[string]error{
			"../outside/x": ErrOutside,
			"a/../../x":    ErrOutside,
			"/etc/passwd":  ErrOutside,
			"":             ErrOutside,
			"link/x":       ErrSymlink,
			"a/flink":      ErrSymlink,
			"a/rel/x":      ErrSymlink,
			"a/nothere":    os.ErrNotExist,
			"a/f/x":        unix.ENOTDIR,
			"a/f\x00/../x": ErrOutside,
		}
		for rel, want := range cases {
			fd, err := r.OpenFD(rel, unix.O_RDONLY)
			if err == nil {
				unix.Close(fd)
			}
			if !errors.Is(err, want) {
				t.Errorf("walk=%v OpenFD(%q) = %v, want %v", walk, rel, err, want)
			}
		}
		fd, err := r.OpenFD("a/f", unix.O_RDONLY)
		if err != nil {
			t.Fatalf("walk=%v: %v", walk, err)
		}
		unix.Close(fd)
	}
	noOpenat2.Store(false)
}

func TestLstatAndParent(t *testing.T) {
	r, _ := tree(t)
	st, err := r.Lstat("link")
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Fatalf("Lstat(link) = %v, %o", err, st.Mode)
	}
	if _, err := r.Lstat("link/x"); !errors.Is(err, ErrSymlink) {
		t.Fatalf("Lstat(link/x) = %v", err)
	}
	if st, err := r.Lstat("."); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Fatalf("Lstat(.) = %v", err)
	}
}

func TestOpenAtNoticesReplacement(t *testing.T) {
	r, _ := tree(t)
	st, _ := r.Lstat("a/f")
	os.Rename(filepath.Join(r.Path(), "a", "f"), filepath.Join(r.Path(), "a", "g"))
	os.WriteFile(filepath.Join(r.Path(), "a", "f"), []byte("new"), 0o644)
	if _, err := r.OpenAt("a/f", unix.O_RDONLY, st.Ino); !errors.Is(err, ErrReplaced) {
		t.Fatalf("OpenAt after replace = %v", err)
	}
	fd, err := r.OpenAt("a/g", unix.O_RDONLY, st.Ino)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
}

func TestRelChecksTheFileIsInside(t *testing.T) {
	r, outside := tree(t)
	fd, _ := unix.Open(filepath.Join(outside, "x"), unix.O_RDONLY, 0)
	defer unix.Close(fd)
	if _, err := r.Rel(fd); !errors.Is(err, ErrOutside) {
		t.Fatalf("Rel(outside file) = %v", err)
	}
	in, _ := r.OpenFD("a/f", unix.O_RDONLY)
	defer unix.Close(in)
	if rel, err := r.Rel(in); err != nil || rel != "a/f" {
		t.Fatalf("Rel = %q, %v", rel, err)
	}
}

// A path longer than PATH_MAX as a whole (each name short) opens one
// component at a time, still refusing symlinks on the way.
func TestOpensPathsLongerThanPathMax(t *testing.T) {
	r, _ := tree(t)
	cur, err := unix.Open(r.Path(), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	comp := strings.Repeat("d", 200)
	var rel string
	for len(rel) < unix.PathMax+300 {
		if err := unix.Mkdirat(cur, comp, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(cur, comp, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(cur)
		if err != nil {
			t.Fatal(err)
		}
		cur = next
		rel = strings.TrimPrefix(rel+"/"+comp, "/")
	}
	unix.Close(cur)
	fd, err := r.OpenFD(rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		t.Fatalf("open of a %d-byte path: %v", len(rel), err)
	}
	unix.Close(fd)
	if err := os.Symlink("/", filepath.Join(r.Path(), comp, "s")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenFD(comp+"/s/"+rel, unix.O_RDONLY); err == nil {
		t.Fatal("a long path through a symlink opened")
	}
}
