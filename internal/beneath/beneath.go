// Package beneath resolves paths inside one directory tree (a backing
// directory) without ever leaving it: no "..", no absolute path, and no
// symlink in any component, whatever renames users of the mount race
// against the daemon. Everything the root daemon opens, stats, changes or
// removes on its own goes through a Root.
package beneath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrOutside: a path that is absolute, holds "..", or otherwise names
// something outside the tree.
var ErrOutside = errors.New("path leaves the filesystem")

// ErrSymlink: a component of the path is a symlink; the daemon never
// follows one.
var ErrSymlink = errors.New("path goes through a symlink")

// ErrReplaced: the file at a path is no longer the one found earlier.
var ErrReplaced = errors.New("file was replaced since it was found")

// Root is an open directory tree.
type Root struct {
	fd   int // the top directory (O_RDONLY: open_by_handle_at wants a real descriptor)
	path string
}

// Open opens the tree at dir (which may itself be reached through
// symlinks: it is the admin's choice).
func Open(dir string) (*Root, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", abs, err)
	}
	return &Root{fd: fd, path: abs}, nil
}

// Close closes the tree's descriptor.
func (r *Root) Close() error { return unix.Close(r.fd) }

// Path is the tree's absolute path (for logs and for what must go by path).
func (r *Root) Path() string { return r.path }

// FD is the descriptor of the top directory.
func (r *Root) FD() int { return r.fd }

// Clean checks a caller's relative path and returns its clean form ("."
// for the top). Absolute paths and paths with ".." are refused, even when
// they would come back inside: a caller that sends one is confused or
// hostile.
func Clean(rel string) (string, error) {
	if rel == "" || strings.ContainsRune(rel, 0) {
		return "", fmt.Errorf("%q: %w", rel, ErrOutside)
	}
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%s: absolute: %w", rel, ErrOutside)
	}
	for _, part := range strings.Split(rel, "/") {
		if part == ".." {
			return "", fmt.Errorf("%s: %w", rel, ErrOutside)
		}
	}
	return filepath.Clean(rel), nil
}

// noOpenat2 is set when the kernel lacks openat2 (before 5.6): paths are
// then walked one O_NOFOLLOW component at a time.
var noOpenat2 atomic.Bool

// OpenFD opens rel with flags (O_CLOEXEC and O_NOFOLLOW are added),
// refusing any path that leaves the tree or goes through a symlink.
func (r *Root) OpenFD(rel string, flags int) (int, error) {
	rel, err := Clean(rel)
	if err != nil {
		return -1, err
	}
	return r.openClean(rel, flags)
}

func (r *Root) openClean(rel string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC
	if !noOpenat2.Load() {
		// RESOLVE_NO_SYMLINKS covers the last component too (O_NOFOLLOW
		// would let O_PATH open a symlink itself).
		how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for {
			fd, err := unix.Openat2(r.fd, rel, &how)
			if err == nil {
				return fd, nil
			}
			switch {
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
				continue // a rename raced the lookup (RESOLVE_ rules ask to retry)
			case errors.Is(err, unix.ENOSYS):
				noOpenat2.Store(true)
			case errors.Is(err, unix.ENAMETOOLONG):
				// Longer than PATH_MAX as a whole (a path the kernel took
				// relative to a directory inside the mount): one component
				// at a time, each short.
				return r.walk(rel, flags|unix.O_NOFOLLOW)
			default:
				return -1, r.pathError(rel, err)
			}
			break
		}
	}
	return r.walk(rel, flags|unix.O_NOFOLLOW)
}

// walk opens rel one component at a time, each with O_NOFOLLOW, beneath
// the root's own descriptor.
func (r *Root) walk(rel string, flags int) (int, error) {
	dir, err := unix.Openat(r.fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(rel, "/")
	for i, part := range parts {
		last := i == len(parts)-1
		f := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if last {
			f = flags
		}
		next, err := unix.Openat(dir, part, f, 0)
		if errors.Is(err, unix.ENOTDIR) && isSymlink(dir, part) {
			err = unix.ELOOP
		}
		unix.Close(dir)
		if err != nil {
			return -1, r.pathError(rel, err)
		}
		dir = next
	}
	return dir, nil
}

func isSymlink(dir int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

func (r *Root) pathError(rel string, err error) error {
	switch {
	case errors.Is(err, unix.EXDEV):
		return &os.PathError{Op: "open", Path: rel, Err: fmt.Errorf("%w (%w)", ErrOutside, unix.EXDEV)}
	case errors.Is(err, unix.ELOOP):
		return &os.PathError{Op: "open", Path: rel, Err: fmt.Errorf("%w (%w)", ErrSymlink, unix.ELOOP)}
	}
	return &os.PathError{Op: "open", Path: rel, Err: err}
}

// OpenFile is OpenFD wrapped in an *os.File.
func (r *Root) OpenFile(rel string, flags int) (*os.File, error) {
	fd, err := r.OpenFD(rel, flags)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(r.path, rel)), nil
}

// OpenAt opens rel and checks that it is still the file (inode ino) found
// earlier; ino 0 checks nothing.
func (r *Root) OpenAt(rel string, flags int, ino uint64) (int, error) {
	fd, err := r.OpenFD(rel, flags)
	if err != nil || ino == 0 {
		return fd, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Ino != ino {
		unix.Close(fd)
		return -1, &os.PathError{Op: "open", Path: rel, Err: ErrReplaced}
	}
	return fd, nil
}

// Lstat returns what rel names (a symlink itself, if it is one), with
// every directory on the way resolved beneath the root.
func (r *Root) Lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	dir, base, err := r.OpenParent(rel)
	if err != nil {
		return st, err
	}
	defer unix.Close(dir)
	if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return st, &os.PathError{Op: "lstat", Path: rel, Err: err}
	}
	return st, nil
}

// OpenParent opens the directory holding rel (O_PATH) and returns it with
// rel's last component, for the *at calls that act on a name. The top
// itself has no parent: its own descriptor and "" come back.
func (r *Root) OpenParent(rel string) (dir int, base string, err error) {
	rel, err = Clean(rel)
	if err != nil {
		return -1, "", err
	}
	if rel == "." {
		dir, err := unix.Openat(r.fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		return dir, "", err
	}
	parent, base := filepath.Split(rel)
	parent = filepath.Clean(parent)
	dir, err = r.openClean(parent, unix.O_PATH|unix.O_DIRECTORY)
	return dir, base, err
}

// OpenDir opens the directory rel for reading its entries.
func (r *Root) OpenDir(rel string) (*os.File, error) {
	return r.OpenFile(rel, unix.O_RDONLY|unix.O_DIRECTORY)
}

// Rel returns the path of the open file fd relative to the root, checking
// that fd lies inside the tree: for files opened by handle, which can name
// any file of the backing filesystem. The path is reopened beneath the
// root and must be the same file, so a rename racing the check fails it.
func (r *Root) Rel(fd int) (string, error) {
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(r.path, p)
	if err != nil || !filepath.IsLocal(rel) && rel != "." {
		return "", fmt.Errorf("%s: %w", p, ErrOutside)
	}
	var want, got unix.Stat_t
	if err := unix.Fstat(fd, &want); err != nil {
		return "", err
	}
	st, err := r.Lstat(rel)
	if err != nil {
		return "", err
	}
	got = st
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return "", fmt.Errorf("%s: %w", rel, ErrReplaced)
	}
	return rel, nil
}

// Walk calls fn for rel and, if it is a directory, for everything under
// it (depth first, names in directory order), never following a symlink:
// a directory swapped for a symlink during the walk is not entered. st is
// what the entry was when it was found.
func (r *Root) Walk(rel string, fn func(rel string, st *unix.Stat_t) error) error {
	st, err := r.Lstat(rel)
	if err != nil {
		return err
	}
	rel, _ = Clean(rel)
	return r.walkDir(rel, &st, fn)
}

func (r *Root) walkDir(rel string, st *unix.Stat_t, fn func(string, *unix.Stat_t) error) error {
	if err := fn(rel, st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return err
	}
	d, err := r.OpenDir(rel)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		d.Close()
		return &os.PathError{Op: "readdir", Path: rel, Err: err}
	}
	type entry struct {
		name string
		st   unix.Stat_t
	}
	ents := make([]entry, 0, len(names))
	for _, name := range names {
		var est unix.Stat_t
		if err := unix.Fstatat(int(d.Fd()), name, &est, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // gone meanwhile
		}
		ents = append(ents, entry{name, est})
	}
	d.Close()
	for i := range ents {
		if err := r.walkDir(filepath.Join(rel, ents[i].name), &ents[i].st, fn); err != nil {
			return err
		}
	}
	return nil
}
