package fs

import (
	"context"
	"fmt"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A path the kernel accepted through the mount (relative to a directory
// inside it, up to PATH_MAX) can be longer than PATH_MAX once the backing
// root is put in front: go-fuse's loopback calls would fail it with
// ENAMETOOLONG. Such calls name the file as /proc/self/fd/DIR/NAME, DIR
// its parent directory opened one component at a time beneath the root.
// Other calls keep go-fuse's paths (no extra open per call).

// long reports whether the backing path of n's child name (n itself for
// "") reaches PATH_MAX.
func (n *node) long(name string) bool {
	return len(n.RootData.Path)+len(n.Path(n.Root()))+len(name)+2 >= unix.PathMax
}

// shortPath names the backing file rel (relative to the root) by a path
// shorter than PATH_MAX; done closes what it opened.
func (f *FS) shortPath(rel string) (p string, done func(), err error) {
	dir, base, err := f.tree.OpenParent(rel)
	if err != nil {
		return "", nil, err
	}
	p = fmt.Sprintf("/proc/self/fd/%d", dir)
	if base != "" {
		p += "/" + base
	}
	return p, func() { unix.Close(dir) }, nil
}

// withShortPath runs fn with a short path of n's child name.
func (n *node) withShortPath(name string, fn func(p string) syscall.Errno) syscall.Errno {
	rel := n.relPath()
	if name != "" {
		rel += "/" + name
	}
	p, done, err := n.fs.shortPath(rel)
	if err != nil {
		return gofs.ToErrno(err)
	}
	defer done()
	return fn(p)
}

// newChild makes the inode of n's child name at path p (just made or
// looked up), as go-fuse's loopback would: same inode numbers and
// generations, so the two ways never disagree about a file.
func (n *node) newChild(ctx context.Context, name, p string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, gofs.ToErrno(err)
	}
	gen := uint64(1)
	var x unix.Statx_t
	if unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME, &x) == nil && x.Mask&unix.STATX_BTIME != 0 &&
		(x.Btime.Sec != 0 || x.Btime.Nsec != 0) {
		gen = uint64(x.Btime.Sec)*1e9 + uint64(x.Btime.Nsec)
	}
	out.Attr.FromStat(&st)
	rd := n.RootData
	swapped := (uint64(st.Dev) << 32) | (uint64(st.Dev) >> 32)
	swappedRoot := (rd.Dev << 32) | (rd.Dev >> 32)
	id := gofs.StableAttr{Mode: uint32(st.Mode), Gen: gen, Ino: (swapped ^ swappedRoot) ^ st.Ino}
	return n.NewInode(ctx, rd.NewNode(rd, n.EmbeddedInode(), name, &st), id), 0
}

// preserveOwner gives a new file to the caller, as go-fuse's loopback does.
func preserveOwner(ctx context.Context, p string) {
	if os.Getuid() != 0 {
		return
	}
	if caller, ok := fuse.FromContext(ctx); ok {
		syscall.Lchown(p, int(caller.Uid), int(caller.Gid))
	}
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !n.long(name) {
		return n.LoopbackNode.Lookup(ctx, name, out)
	}
	var ch *gofs.Inode
	errno := n.withShortPath(name, func(p string) (errno syscall.Errno) {
		ch, errno = n.newChild(ctx, name, p, out)
		return errno
	})
	return ch, errno
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f != nil || !n.long("") {
		return n.LoopbackNode.Getattr(ctx, f, out)
	}
	return n.withShortPath("", func(p string) syscall.Errno {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return gofs.ToErrno(err)
		}
		out.FromStat(&st)
		return 0
	})
}

// makeChild runs mk (which makes the child name at p) and returns its inode.
func (n *node) makeChild(ctx context.Context, name string, out *fuse.EntryOut, mk func(p string) error, undo func(p string) error) (*gofs.Inode, syscall.Errno) {
	var ch *gofs.Inode
	errno := n.withShortPath(name, func(p string) (errno syscall.Errno) {
		if err := mk(p); err != nil {
			return gofs.ToErrno(err)
		}
		preserveOwner(ctx, p)
		if ch, errno = n.newChild(ctx, name, p, out); errno != 0 {
			undo(p)
		}
		return errno
	})
	return ch, errno
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !n.long(name) {
		return n.LoopbackNode.Mkdir(ctx, name, mode, out)
	}
	return n.makeChild(ctx, name, out, func(p string) error { return syscall.Mkdir(p, mode) }, syscall.Rmdir)
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !n.long(name) {
		return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	}
	return n.makeChild(ctx, name, out, func(p string) error { return syscall.Mknod(p, mode, int(rdev)) }, syscall.Unlink)
}

// withPath runs fn with a path of n's child name (n itself for ""):
// the backing path, or a short one through the parent's descriptor
// when that is too long.
func (n *node) withPath(name string, fn func(p string) syscall.Errno) syscall.Errno {
	if n.long(name) {
		return n.withShortPath(name, fn)
	}
	if name == "" {
		return fn(n.backingPath())
	}
	return fn(n.backingPath() + "/" + name)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !n.long(name) {
		return n.LoopbackNode.Symlink(ctx, target, name, out)
	}
	return n.makeChild(ctx, name, out, func(p string) error { return syscall.Symlink(target, p) }, syscall.Unlink)
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if !n.long(name) && !t.long("") {
		return n.LoopbackNode.Link(ctx, target, name, out)
	}
	if _, parent := t.Parent(); parent == nil {
		return nil, syscall.EXDEV // named only by a descriptor (O_TMPFILE)
	}
	from, done, err := n.fs.shortPath(t.relPath())
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	defer done()
	var ch *gofs.Inode
	errno := n.withShortPath(name, func(p string) (errno syscall.Errno) {
		if err := syscall.Link(from, p); err != nil {
			return gofs.ToErrno(err)
		}
		if ch, errno = n.newChild(ctx, name, p, out); errno != 0 {
			syscall.Unlink(p)
		}
		return errno
	})
	return ch, errno
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if !n.long("") {
		return n.LoopbackNode.Readlink(ctx)
	}
	var target []byte
	errno := n.withShortPath("", func(p string) syscall.Errno {
		for l := 256; ; l *= 2 {
			buf := make([]byte, l)
			sz, err := syscall.Readlink(p, buf)
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
	if !n.long("") {
		return n.LoopbackNode.OpendirHandle(ctx, flags)
	}
	fd, err := n.fs.tree.OpenFD(n.relPath(), unix.O_RDONLY|unix.O_DIRECTORY)
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

func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	if !n.long("") {
		return n.LoopbackNode.Readdir(ctx)
	}
	fd, err := n.fs.tree.OpenFD(n.relPath(), unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return gofs.NewLoopbackDirStreamFd(fd)
}

// removeName unlinks (or with dir, removes the directory) n's child name.
func (n *node) removeName(ctx context.Context, name string, dir bool) syscall.Errno {
	switch {
	case !n.long(name) && dir:
		return n.LoopbackNode.Rmdir(ctx, name)
	case !n.long(name):
		return n.LoopbackNode.Unlink(ctx, name)
	}
	return n.withShortPath(name, func(p string) syscall.Errno {
		if dir {
			return gofs.ToErrno(syscall.Rmdir(p))
		}
		return gofs.ToErrno(syscall.Unlink(p))
	})
}

// rename moves n's child name to newParent's newName.
func (n *node) rename(ctx context.Context, name string, np *node, newName string, flags uint32) syscall.Errno {
	if !n.long(name) && !np.long(newName) {
		return n.LoopbackNode.Rename(ctx, name, np, newName, flags)
	}
	from, done, err := n.fs.shortPath(n.relPath() + "/" + name)
	if err != nil {
		return gofs.ToErrno(err)
	}
	defer done()
	return np.withShortPath(newName, func(p string) syscall.Errno {
		return gofs.ToErrno(unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, p, uint(flags)))
	})
}

// setattrByPath is go-fuse's loopback Setattr without a handle, on a
// short path: mode, owner, size, then times (so that an explicit mtime
// is not clobbered by the truncate).
func (n *node) setattrByPath(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if !n.long("") {
		return n.LoopbackNode.Setattr(ctx, nil, in, out)
	}
	return n.withShortPath("", func(p string) syscall.Errno {
		if m, ok := in.GetMode(); ok {
			if err := syscall.Chmod(p, m); err != nil {
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
			if err := unix.Fchownat(unix.AT_FDCWD, p, su, sg, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return gofs.ToErrno(err)
			}
		}
		if sz, ok := in.GetSize(); ok {
			if err := syscall.Truncate(p, int64(sz)); err != nil {
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
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ta, tm}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return gofs.ToErrno(err)
			}
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return gofs.ToErrno(err)
		}
		out.FromStat(&st)
		return 0
	})
}

// createName is go-fuse's loopback Create, on a short path when needed.
func (n *node) createName(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if !n.long(name) {
		return n.LoopbackNode.Create(ctx, name, flags, mode, out)
	}
	var ch *gofs.Inode
	var fh gofs.FileHandle
	errno := n.withShortPath(name, func(p string) (errno syscall.Errno) {
		fd, err := syscall.Open(p, int(flags&^syscall.O_APPEND)|syscall.O_CREAT|syscall.O_CLOEXEC, mode)
		if err != nil {
			return gofs.ToErrno(err)
		}
		preserveOwner(ctx, p)
		if ch, errno = n.newChild(ctx, name, p, out); errno != 0 {
			syscall.Close(fd)
			return errno
		}
		fh = gofs.NewLoopbackFile(fd)
		return 0
	})
	return ch, fh, 0, errno
}
