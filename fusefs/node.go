package fusefs

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Every operation done for a FUSE request reaches the inode the request
// names through a descriptor of that inode, never through a path string
// walked afresh (DESIGN.md, invariant 11). A node is named by its file
// handle on the backing filesystem (name_to_handle_at), taken when the
// kernel first learns of it; each request opens it again by handle
// (open_by_handle_at, which gives ESTALE once the file is gone) and acts on
// that descriptor, or on a name in that directory with an *at call. A
// directory renamed away and replaced by a symlink, by another node or
// through the backing tree, changes nothing: the daemon never walks a path
// of the mount, so nothing it does can land outside the tree.

// fileID names a backing file by identity.
type fileID struct {
	handle unix.FileHandle
	mount  int // the mount holding it (name_to_handle_at's mount id)
}

// node is one file or directory of the mount. The root has no handle: it
// is the tree's own descriptor.
type node struct {
	gofs.Inode
	fs   *FS
	id   fileID
	root bool
}

// mounts keeps, for each filesystem mounted below the backing root that the
// tree reaches, a descriptor that open_by_handle_at decodes handles with.
type mounts struct {
	mu   sync.Mutex
	root int         // the backing root's mount id
	fds  map[int]int // mount id -> descriptor on that mount
}

// nameOK: the kernel sends one component; anything else is refused so
// that an *at call can never walk.
func nameOK(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// open opens the node's file by identity with flags (O_CLOEXEC added).
func (n *node) open(flags int) (int, error) {
	flags |= unix.O_CLOEXEC
	if n.root {
		return unix.Openat(n.fs.tree.FD(), ".", flags, 0)
	}
	mfd, err := n.fs.mountFD(n.id.mount)
	if err != nil {
		return -1, err
	}
	for {
		fd, err := unix.OpenByHandleAt(mfd, n.id.handle, flags)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// openPath opens the node O_PATH: enough for fstat, *at calls and
// /proc/self/fd reopens, and never opens a device or waits on a fifo.
func (n *node) openPath() (int, error) { return n.open(unix.O_PATH) }

// openDir opens the node as a directory for *at calls on its names.
func (n *node) openDir() (int, error) { return n.open(unix.O_PATH | unix.O_DIRECTORY) }

func (f *FS) mountFD(id int) (int, error) {
	if id == f.mounts.root {
		return f.tree.FD(), nil
	}
	f.mounts.mu.Lock()
	defer f.mounts.mu.Unlock()
	if fd, ok := f.mounts.fds[id]; ok {
		return fd, nil
	}
	return -1, unix.ESTALE
}

// learnMount keeps a descriptor of the filesystem that fd (found by a
// lookup, O_PATH) lies on, when it is not the root's: open_by_handle_at
// needs a real descriptor there. Only directories (a mount's root) are
// kept; anything else mounted inside the tree is refused.
func (f *FS) learnMount(id int, fd int, mode uint32) error {
	f.mounts.mu.Lock()
	defer f.mounts.mu.Unlock()
	if _, ok := f.mounts.fds[id]; ok || id == f.mounts.root {
		return nil
	}
	if mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.EXDEV
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if f.mounts.fds == nil {
		f.mounts.fds = map[int]int{}
	}
	f.mounts.fds[id] = dfd
	return nil
}

func (f *FS) closeMounts() {
	f.mounts.mu.Lock()
	defer f.mounts.mu.Unlock()
	for id, fd := range f.mounts.fds {
		unix.Close(fd)
		delete(f.mounts.fds, id)
	}
}

// rootMountID is the mount id of the tree's top directory.
func rootMountID(fd int) (int, error) {
	_, id, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return 0, fmt.Errorf("the backing filesystem gives no file handles (name_to_handle_at: %w); cascadefs names files by handle", err)
	}
	return id, nil
}

// procPath names the open file fd for the calls that have no descriptor
// form on O_PATH descriptors (chmod, truncate, xattrs): the magic link
// leads to exactly that inode, never through a path of the tree.
func procPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// reopen opens the file that the O_PATH descriptor fd names with flags.
func reopen(fd int, flags int) (int, error) {
	for {
		nfd, err := unix.Open(procPath(fd), flags|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		return nfd, err
	}
}

// statFD is fstat with the birth time (the inode generation, as go-fuse's
// loopback computes it).
func statFD(fd int) (st syscall.Stat_t, gen uint64, err error) {
	var x unix.Statx_t
	err = unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x)
	if err != nil {
		return st, 0, err
	}
	st.Dev = unix.Mkdev(x.Dev_major, x.Dev_minor)
	st.Ino = x.Ino
	st.Nlink = uint64(x.Nlink)
	st.Mode = uint32(x.Mode)
	st.Uid, st.Gid = x.Uid, x.Gid
	st.Rdev = unix.Mkdev(x.Rdev_major, x.Rdev_minor)
	st.Size = int64(x.Size)
	st.Blksize = int64(x.Blksize)
	st.Blocks = int64(x.Blocks)
	st.Atim = syscall.Timespec{Sec: x.Atime.Sec, Nsec: int64(x.Atime.Nsec)}
	st.Mtim = syscall.Timespec{Sec: x.Mtime.Sec, Nsec: int64(x.Mtime.Nsec)}
	st.Ctim = syscall.Timespec{Sec: x.Ctime.Sec, Nsec: int64(x.Ctime.Nsec)}
	gen = 1
	if x.Mask&unix.STATX_BTIME != 0 && (x.Btime.Sec != 0 || x.Btime.Nsec != 0) {
		gen = uint64(x.Btime.Sec)*1e9 + uint64(x.Btime.Nsec)
	}
	return st, gen, nil
}

// child makes (or finds) the inode of n's entry name, which fd (any open
// of it) names: identity from its handle, attributes into out. Inode
// numbers and generations are go-fuse's loopback's.
func (n *node) child(ctx context.Context, name string, fd int, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	st, gen, err := statFD(fd)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	h, mount, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		n.fs.log.Warn("a file of the tree gives no file handle; it is not served", "file", n.relPath()+"/"+name, "reason", err)
		return nil, syscall.EXDEV
	}
	if err := n.fs.learnMount(mount, fd, st.Mode); err != nil {
		return nil, gofs.ToErrno(err)
	}
	out.Attr.FromStat(&st)
	swapped := (uint64(st.Dev) << 32) | (uint64(st.Dev) >> 32)
	swappedRoot := (n.fs.rootDev << 32) | (n.fs.rootDev >> 32)
	attr := gofs.StableAttr{Mode: st.Mode, Gen: gen, Ino: (swapped ^ swappedRoot) ^ st.Ino}
	ch := &node{fs: n.fs, id: fileID{handle: h, mount: mount}}
	return n.NewInode(ctx, ch, attr), 0
}

// inDir runs fn with a descriptor of directory n (one that *at calls,
// fsync and fstat take): the root's own, or one the directory cache keeps.
func (n *node) inDir(forSync bool, fn func(dir int) syscall.Errno) syscall.Errno {
	if n.root {
		return fn(n.fs.tree.FD())
	}
	dir, put, err := n.fs.dirs.get(n)
	if err != nil {
		return gofs.ToErrno(err)
	}
	defer put()
	return fn(dir)
}

// withFD runs fn with an O_PATH descriptor of n.
func (n *node) withFD(fn func(fd int) syscall.Errno) syscall.Errno {
	if n.root || n.StableAttr().Mode&unix.S_IFMT == unix.S_IFDIR {
		return n.inDir(false, fn)
	}
	fd, err := n.openPath()
	if err != nil {
		return gofs.ToErrno(err)
	}
	defer unix.Close(fd)
	return fn(fd)
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !nameOK(name) {
		return nil, syscall.EINVAL
	}
	var ch *gofs.Inode
	errno := n.inDir(false, func(dir int) syscall.Errno {
		fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return gofs.ToErrno(err)
		}
		defer unix.Close(fd)
		var errno syscall.Errno
		ch, errno = n.child(ctx, name, fd, out)
		return errno
	})
	return ch, errno
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if fga, ok := f.(gofs.FileGetattrer); ok && f != nil {
		return fga.Getattr(ctx, out)
	}
	return n.withFD(func(fd int) syscall.Errno {
		st, _, err := statFD(fd)
		if err != nil {
			return gofs.ToErrno(err)
		}
		out.FromStat(&st)
		return 0
	})
}

func (n *node) Statx(ctx context.Context, f gofs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	if fsx, ok := f.(gofs.FileStatxer); ok && f != nil {
		return fsx.Statx(ctx, flags, mask, out)
	}
	return n.withFD(func(fd int) syscall.Errno {
		var x unix.Statx_t
		flags := int(flags)&(unix.AT_STATX_FORCE_SYNC|unix.AT_STATX_DONT_SYNC) | unix.AT_EMPTY_PATH | unix.AT_SYMLINK_NOFOLLOW
		if err := unix.Statx(fd, "", flags, int(mask), &x); err != nil {
			return gofs.ToErrno(err)
		}
		out.FromStatx(&x)
		return 0
	})
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Fstatfs(n.fs.tree.FD(), &s); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStatfsT(&s)
	return 0
}

// setattrFD is a setattr on the file the O_PATH descriptor fd names: mode,
// owner, size, then times (so an explicit mtime is not clobbered by the
// truncate), as go-fuse's loopback orders them.
func setattrFD(fd int, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if m, ok := in.GetMode(); ok {
		if err := unix.Chmod(procPath(fd), m); err != nil {
			return gofs.ToErrno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		su, sg := -1, -1
		if uok {
			su = int(uid)
		}
		if gok {
			sg = int(gid)
		}
		if err := unix.Fchownat(fd, "", su, sg, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return gofs.ToErrno(err)
		}
	}
	if sz, ok := in.GetSize(); ok {
		if err := unix.Truncate(procPath(fd), int64(sz)); err != nil {
			return gofs.ToErrno(err)
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ta := unix.Timespec{Nsec: unix.UTIME_OMIT}
		tm := unix.Timespec{Nsec: unix.UTIME_OMIT}
		if aok {
			ta = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			tm = unix.NsecToTimespec(mtime.UnixNano())
		}
		if err := unix.UtimesNanoAt(fd, "", []unix.Timespec{ta, tm}, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return gofs.ToErrno(err)
		}
	}
	st, _, err := statFD(fd)
	if err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStat(&st)
	return 0
}

// callerIDs returns the caller's uid and gid, for giving a new file to
// whoever made it; ok is false when the daemon is not root (the file is
// then the daemon's, as the backing filesystem made it).
func callerIDs(ctx context.Context) (uid, gid int, ok bool) {
	if unix.Geteuid() != 0 {
		return 0, 0, false
	}
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return 0, 0, false
	}
	return int(caller.Uid), int(caller.Gid), true
}

// makeEntry makes n's entry name with mk (mode 0: nobody but root can use
// it yet), opens it without following anything, checks that it is still
// the root-owned, unused entry of the kind just made (a user racing a
// rename cannot get the daemon to give away a file of someone else), and
// only then gives it to the caller with its final mode.
func (n *node) makeEntry(ctx context.Context, name string, kind uint32, mode uint32, out *fuse.EntryOut, mk func(dir int) error, undoFlags int) (*gofs.Inode, syscall.Errno) {
	if !nameOK(name) {
		return nil, syscall.EINVAL
	}
	var ch *gofs.Inode
	errno := n.inDir(false, func(dir int) syscall.Errno {
		if err := mk(dir); err != nil {
			return gofs.ToErrno(err)
		}
		fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return gofs.ToErrno(err)
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return gofs.ToErrno(err)
		}
		fresh := st.Mode&unix.S_IFMT == kind && int(st.Uid) == unix.Geteuid() && st.Nlink <= 2
		if kind != unix.S_IFLNK {
			fresh = fresh && st.Mode&0o777 == 0
		}
		if !fresh {
			n.fs.log.Warn("new entry replaced before it was given to its creator; left as it is", "file", n.relPath()+"/"+name)
			return syscall.EIO
		}
		if uid, gid, ok := callerIDs(ctx); ok {
			if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
				unix.Unlinkat(dir, name, undoFlags)
				return gofs.ToErrno(err)
			}
		}
		if kind != unix.S_IFLNK {
			// A directory inherits set-group-ID from a set-group-ID
			// parent; keep it.
			final := mode&07777 | uint32(st.Mode)&unix.S_ISGID
			if err := unix.Chmod(procPath(fd), final); err != nil {
				unix.Unlinkat(dir, name, undoFlags)
				return gofs.ToErrno(err)
			}
		}
		var errno syscall.Errno
		if ch, errno = n.child(ctx, name, fd, out); errno != 0 {
			unix.Unlinkat(dir, name, undoFlags)
		}
		return errno
	})
	return ch, errno
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return n.makeEntry(ctx, name, unix.S_IFDIR, mode, out, func(dir int) error {
		return unix.Mkdirat(dir, name, 0)
	}, unix.AT_REMOVEDIR)
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	kind := mode & unix.S_IFMT
	if kind == 0 {
		kind = unix.S_IFREG
	}
	return n.makeEntry(ctx, name, kind, mode, out, func(dir int) error {
		return unix.Mknodat(dir, name, kind, int(rdev))
	}, 0)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return n.makeEntry(ctx, name, unix.S_IFLNK, 0, out, func(dir int) error {
		return unix.Symlinkat(target, dir, name)
	}, 0)
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if !nameOK(name) {
		return nil, syscall.EINVAL
	}
	var ch *gofs.Inode
	errno := t.withFD(func(tfd int) syscall.Errno {
		return n.inDir(false, func(dir int) syscall.Errno {
			// AT_EMPTY_PATH: the file itself, not a name of it.
			if err := unix.Linkat(tfd, "", dir, name, unix.AT_EMPTY_PATH); err != nil {
				return gofs.ToErrno(err)
			}
			var errno syscall.Errno
			if ch, errno = n.child(ctx, name, tfd, out); errno != 0 {
				unix.Unlinkat(dir, name, 0)
			}
			return errno
		})
	})
	return ch, errno
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	var target []byte
	errno := n.withFD(func(fd int) syscall.Errno {
		for l := 256; ; l *= 2 {
			buf := make([]byte, l)
			sz, err := unix.Readlinkat(fd, "", buf)
			if err != nil {
				return gofs.ToErrno(err)
			}
			if sz < len(buf) {
				target = buf[:sz]
				return 0
			}
		}
	})
	return target, errno
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fd, err := n.open(unix.O_RDONLY | unix.O_DIRECTORY)
	if err != nil {
		return nil, 0, gofs.ToErrno(err)
	}
	ds, errno := gofs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		unix.Close(fd)
		return nil, 0, errno
	}
	return ds, 0, 0
}

func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	dir, err := n.openDir()
	if err != nil {
		return nil, nil, 0, gofs.ToErrno(err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat(dir, ".", int(flags&^syscall.O_APPEND)|unix.O_TMPFILE|unix.O_CLOEXEC, mode)
	if err != nil {
		return nil, nil, 0, gofs.ToErrno(err)
	}
	if uid, gid, ok := callerIDs(ctx); ok {
		unix.Fchown(fd, uid, gid)
	}
	ch, errno := n.child(ctx, "", fd, out)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, 0, errno
	}
	h, fuseFlags, errno := n.fs.newHandle(ctx, fd, n.relPath()+"/(tmpfile)", flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ch, h.kernelHandle(), fuseFlags, 0
}

// xattrs of the node, through /proc/self/fd (O_PATH descriptors have no
// f*xattr calls). A symlink's own xattrs cannot be reached that way
// without following it, so they are refused, as libfuse's passthrough
// does (user.* xattrs are not allowed on symlinks anyway).
func (n *node) withXattrPath(fn func(p string) syscall.Errno) syscall.Errno {
	return n.withFD(func(fd int) syscall.Errno {
		if n.StableAttr().Mode&unix.S_IFMT == unix.S_IFLNK {
			return syscall.EPERM
		}
		return fn(procPath(fd))
	})
}
