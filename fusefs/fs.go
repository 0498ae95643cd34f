// Package fusefs is the FUSE layer: a loopback over the backing directory that
// intercepts stub files. It raises DM events and blocks readers until they
// are answered, hides the stub records, and opens fully resident files in
// kernel passthrough. It knows dmapi and stub, never recall or cluster.
package fusefs

import (
	"context"
	"errors"
	"fmt"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/stub"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Events is how the FUSE layer reaches the DM session of its filesystem.
type Events interface {
	// Raise sends a synchronous event and waits for its answer.
	Raise(ctx context.Context, ev *dmapi.Event) error
	// Garbage notes durably that the object of a stub becomes garbage
	// when its last link goes.
	dmapi.Garbage
}

// Options configure a mount.
type Options struct {
	Backing string // backing directory
	Name    string // filesystem name, in events
	Source  string // the mount source (mountinfo), unique on the host; default Name
	Events  Events
	Log     *slog.Logger
	// SmallFile: stubs up to this size are recalled whole on first read.
	SmallFile int64
	// Region: the unit in which reads of large stubs raise events.
	Region int64
	// NoPassthrough disables kernel passthrough for resident files.
	NoPassthrough bool
	Debug         bool
	// Space, if set, is the filesystem's space monitor: writes keep its
	// quota, and out-of-space writes wait up to SpaceWait (the setting
	// event-timeout) for its cycle.
	Space     Space
	SpaceWait time.Duration
	// Metrics receives how long readers wait for recalls (nil: none).
	Metrics *metrics.Registry
	// Written, if set, is told when a handle that changed a file closes
	// (before close returns), so other nodes can drop their caches of it
	// (close-to-open consistency).
	Written func(ino uint64)
	// Changed, if set, is told after each change of attributes or names
	// through this mount, so other nodes can drop their cached copies; it
	// need not wait for them.
	Changed func(Change)
	// Renamed, if set, is told of each rename through this mount, by
	// paths relative to the root (exchange: the two swapped), for the
	// archive's namespace journal.
	Renamed func(from, to string, exchange bool)
}

// FS is one mounted managed filesystem.
type FS struct {
	nodesMu sync.Mutex
	nodes   map[uint64]*node // backing inode -> kernel inode
	opts    Options
	root    string
	tree    *beneath.Root // the backing tree: the daemon's own opens resolve beneath it
	rootDev uint64        // device of the root, mixed into inode numbers as go-fuse's loopback does
	mounts  mounts        // descriptors that file handles are decoded with
	dirs    *dirCache     // O_PATH descriptors of directories used last
	server  *fuse.Server
	served  chan struct{} // closed when the server has ended
	gates   gates
	log     *slog.Logger
	// passthrough is true when the kernel accepted passthrough.
	passthrough bool
	space       *spaceGuard // nil without a space monitor
	// killPriv sees the kernel's requests to clear set-ID bits (nil
	// until mounted; see killpriv.go).
	killPriv *killPrivFS
}

// Mount mounts the backing directory at mountpoint.
//
// It sets the process's umask to 0: the kernel sends every new file's
// mode with the caller's umask applied already, and the daemon's own
// (022) took group and other write away again (a directory made 0777
// for everyone became 0755). The daemon's own files all have explicit
// modes.
func Mount(mountpoint string, opts Options) (*FS, error) {
	unix.Umask(0)
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler) // none given: none
	}
	if opts.Source == "" {
		opts.Source = opts.Name
	}
	if opts.Region <= 0 {
		opts.Region = stub.DefaultChunkSize
	}
	root, err := filepath.Abs(opts.Backing)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(root, &st); err != nil {
		return nil, fmt.Errorf("backing directory: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("backing directory %s: not a directory", root)
	}
	if opts.SpaceWait <= 0 || opts.SmallFile <= 0 {
		return nil, errors.New("fs: Options without SpaceWait and SmallFile (settings.Defaults has them)")
	}
	tree, err := beneath.Open(root)
	if err != nil {
		return nil, fmt.Errorf("backing directory: %w", err)
	}
	rootMount, err := rootMountID(tree.FD())
	if err != nil {
		tree.Close()
		return nil, fmt.Errorf("backing directory %s: %w", root, err)
	}
	f := &FS{opts: opts, root: root, tree: tree, log: opts.Log, nodes: map[uint64]*node{}, rootDev: uint64(st.Dev)}
	f.mounts.root = rootMount
	f.dirs = newDirCache(dirCacheSize)
	if opts.Space != nil {
		f.space = &spaceGuard{src: opts.Space, root: root}
	}
	rootNode := &node{fs: f, root: true}

	asRoot := os.Geteuid() == 0
	one := time.Second
	mo := fuse.MountOptions{
		FsName:       opts.Source,
		Name:         "cascadefs",
		AllowOther:   asRoot,
		DirectMount:  true,
		MaxWrite:     1 << 20,
		MaxReadAhead: 1 << 20,
		// Readahead of stubs waits for recalls: with the kernel's default
		// of 12 such requests in flight, one user's dozen readers held
		// every slot and another user's read queued behind them in the
		// kernel, whatever the DM session did. The kernel throttles new
		// readahead only past the congestion threshold (3/4 of it).
		MaxBackground: maxBackground,
		// Reads come in requests of 1 MiB (readAheadKB): go-fuse's splice
		// of a file result needs a pipe larger than the largest one the
		// system allows (1 MiB), fails and logs on every read, then reads
		// into a buffer anyway. Read into the buffer at once.
		DisableSplice: true,
		EnableLocks:   true,
		Debug:         opts.Debug,
		// We clear set-ID bits ourselves; the kernel stops asking for
		// security.capability before each write (killpriv.go).
		ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
	}
	if asRoot {
		mo.Options = append(mo.Options, "default_permissions")
	}
	f.killPriv = &killPrivFS{RawFileSystem: gofs.NewNodeFS(rootNode, &gofs.Options{
		MountOptions: mo,
		EntryTimeout: &one,
		AttrTimeout:  &one,
		// Permissions are checked by the kernel (default_permissions);
		// files are created as the caller.
		NullPermissions: true,
	})}
	server, err := fuse.NewServer(f.killPriv, mountpoint, &mo)
	if err == nil {
		go server.Serve()
		err = server.WaitMount() // on failure the serve loop ends by itself
	}
	if err != nil {
		f.dirs.close()
		tree.Close()
		f.closeMounts()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	f.server = server
	f.served = make(chan struct{})
	go func() { server.Wait(); f.dirs.close(); tree.Close(); f.closeMounts(); close(f.served) }()
	f.passthrough = !opts.NoPassthrough && server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0
	if err := setReadAhead(mountpoint, readAheadKB); err != nil {
		f.log.Warn("kernel readahead of the mount left at its default: reads of stubs come in smaller requests", "mountpoint", mountpoint, "reason", err)
	}
	return f, nil
}

// readAheadKB is the kernel's readahead for the mount. The kernel gives a
// FUSE mount at most its default (128 KiB) whatever the daemon asks for
// at init, so a sequential reader's requests would be 128 KiB each: eight
// times as many round trips through the daemon as at 1 MiB (MaxPages,
// from MaxWrite). Its sysfs knob lifts that.
const readAheadKB = 4096

// setReadAhead sets the readahead of the mount at mountpoint (answered
// by this process: the caller has just mounted it).
func setReadAhead(mountpoint string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return err
	}
	knob := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(knob, []byte(fmt.Sprintf("%d\n", kb)), 0)
}

// Serving reports whether the FUSE server still runs (not unmounted or dead).
func (f *FS) Serving() bool {
	select {
	case <-f.served:
		return false
	default:
		return true
	}
}

// Passthrough reports whether resident files are served by kernel passthrough.
func (f *FS) Passthrough() bool { return f.passthrough }

// Unmount unmounts and waits for the server to end. A mount already gone
// (unmounted from outside) needs nothing more.
func (f *FS) Unmount() error {
	select {
	case <-f.served:
		return nil
	default:
	}
	err := f.server.Unmount()
	if err == nil {
		<-f.served
	}
	return err
}

// Wait blocks until the filesystem is unmounted.
func (f *FS) Wait() { <-f.served }

// OnAdd and OnForget keep the registry of inodes the kernel knows, so that
// Invalidate can find them by backing inode number.
func (n *node) OnAdd(ctx context.Context) {
	n.fs.nodesMu.Lock()
	n.fs.nodes[n.StableAttr().Ino] = n
	n.fs.nodesMu.Unlock()
}

func (n *node) OnForget() {
	n.fs.dirs.drop(n)
	n.fs.nodesMu.Lock()
	if n.fs.nodes[n.StableAttr().Ino] == n {
		delete(n.fs.nodes, n.StableAttr().Ino)
	}
	n.fs.nodesMu.Unlock()
}

// maxBackground is how many asynchronous requests (readahead, mostly)
// the kernel keeps in flight to the daemon.
const maxBackground = 256

// dirCacheSize bounds the directory descriptors the mount keeps open.
const dirCacheSize = 256

// Change is what a change through one mount makes stale in the others'
// kernel caches: a file's attributes and pages (Ino), and names (an entry
// of directory Parent, both by backing inode number).
type Change struct {
	Ino     uint64  `json:"ino,omitempty"`
	Entries []Entry `json:"entries,omitempty"`
}

// Entry is a name in a directory.
type Entry struct {
	Parent uint64 `json:"parent"`
	Name   string `json:"name"`
}

func (f *FS) changed(c Change) {
	if f.opts.Changed != nil {
		f.opts.Changed(c)
	}
}

// Invalidate drops what the kernel caches of a change made through another
// node: the attributes and pages of the file, the names.
func (f *FS) Invalidate(c Change) {
	f.nodesMu.Lock()
	n := f.nodes[c.Ino]
	parents := make([]*node, len(c.Entries))
	for i, e := range c.Entries {
		parents[i] = f.nodes[e.Parent]
	}
	f.nodesMu.Unlock()
	if n != nil && c.Ino != 0 {
		n.NotifyContent(0, 0)
	}
	for i, p := range parents {
		if p != nil {
			p.NotifyEntry(c.Entries[i].Name)
		}
	}
}

// DropCaches drops what the kernel caches of this mount: the pages and
// attributes of every file it knows and every name, as echo 3 >
// /proc/sys/vm/drop_caches would, but for this mount only (the tests'
// way to send the next reads and lookups to the daemon).
func (f *FS) DropCaches() {
	f.nodesMu.Lock()
	nodes := make([]*node, 0, len(f.nodes))
	for _, n := range f.nodes {
		nodes = append(nodes, n)
	}
	f.nodesMu.Unlock()
	for _, n := range nodes {
		n.NotifyContent(0, 0)
		for name := range n.Children() {
			n.NotifyEntry(name)
		}
	}
}

func (n *node) ino() uint64 { return n.StableAttr().Ino }

var (
	_ = (gofs.NodeLookuper)((*node)(nil))
	_ = (gofs.NodeGetattrer)((*node)(nil))
	_ = (gofs.NodeStatxer)((*node)(nil))
	_ = (gofs.NodeStatfser)((*node)(nil))
	_ = (gofs.NodeOpener)((*node)(nil))
	_ = (gofs.NodeCreater)((*node)(nil))
	_ = (gofs.NodeTmpfiler)((*node)(nil))
	_ = (gofs.NodeMkdirer)((*node)(nil))
	_ = (gofs.NodeMknoder)((*node)(nil))
	_ = (gofs.NodeSymlinker)((*node)(nil))
	_ = (gofs.NodeLinker)((*node)(nil))
	_ = (gofs.NodeReadlinker)((*node)(nil))
	_ = (gofs.NodeOpendirHandler)((*node)(nil))
	_ = (gofs.NodeSetattrer)((*node)(nil))
	_ = (gofs.NodeUnlinker)((*node)(nil))
	_ = (gofs.NodeRmdirer)((*node)(nil))
	_ = (gofs.NodeRenamer)((*node)(nil))
	_ = (gofs.NodeGetxattrer)((*node)(nil))
	_ = (gofs.NodeSetxattrer)((*node)(nil))
	_ = (gofs.NodeRemovexattrer)((*node)(nil))
	_ = (gofs.NodeListxattrer)((*node)(nil))
	_ = (gofs.NodeCopyFileRanger)((*node)(nil))
	_ = (gofs.NodeOnAdder)((*node)(nil))
	_ = (gofs.NodeOnForgetter)((*node)(nil))
)

// relPath is the node's path relative to the backing root as the kernel
// last named it: a label for logs and events, never opened.
func (n *node) relPath() string {
	if p := n.Path(n.Root()); p != "" {
		return p
	}
	return "."
}

// openFlags are the flags an open of n's file by identity takes from the
// kernel's: no creation, no truncation (done under the DM protocol).
func openFlags(flags uint32) int {
	return int(flags) &^ (unix.O_TRUNC | unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY)
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	flags &^= syscall.O_APPEND | fuse.FMODE_EXEC
	p := n.relPath()
	var h *handle
	var fuseFlags uint32
	for round := 0; ; round++ {
		fd, err := n.open(openFlags(flags))
		if err != nil {
			return nil, 0, gofs.ToErrno(err)
		}
		var errno syscall.Errno
		h, fuseFlags, errno = n.fs.newHandle(ctx, fd, p, flags)
		if errno == 0 {
			break
		}
		if errno != errNeedResident || round == 2 {
			if errno == errNeedResident {
				n.fs.log.Error("file could not be made resident for an open beside passthrough opens; the open gets EIO", "file", p)
				errno = syscall.EIO
			}
			return nil, 0, errno
		}
		// Open for passthrough elsewhere: make the file resident (drop its
		// record), then it can be opened for passthrough too.
		if errno := n.makeResident(ctx); errno != 0 {
			return nil, 0, errno
		}
	}
	if flags&unix.O_TRUNC != 0 {
		if errno := h.truncate(ctx, 0, n.fs.killRequested(ctx)); errno != 0 {
			h.Release(ctx)
			return nil, 0, errno
		}
	}
	return h.kernelHandle(), fuseFlags, 0
}

// Create makes a new file. The kernel sends CREATE when it believes the
// name is free, but another node may have made it meanwhile: an existing
// file, maybe a stub, is opened through Open instead, which handles
// O_TRUNC of a stub (a plain open with O_TRUNC would cut its data under
// its record).
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if !nameOK(name) {
		return nil, nil, 0, syscall.EINVAL
	}
	inode, fd, errno := n.createName(ctx, name, flags, mode, out)
	for try := 0; errno == syscall.EEXIST && flags&unix.O_EXCL == 0 && try < 3; try++ {
		child, lerr := n.Lookup(ctx, name, out)
		if lerr == syscall.ENOENT { // removed meanwhile: create again
			inode, fd, errno = n.createName(ctx, name, flags, mode, out)
			continue
		}
		if lerr != 0 {
			return nil, nil, 0, lerr
		}
		existing, ok := child.Operations().(*node)
		if !ok || out.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
			return nil, nil, 0, syscall.EEXIST
		}
		h, fuseFlags, errno := existing.Open(ctx, flags&^unix.O_CREAT)
		if errno != 0 {
			return nil, nil, 0, errno
		}
		return child, h, fuseFlags, 0
	}
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h, fuseFlags, errno := n.fs.newHandle(ctx, fd, n.relPath()+"/"+name, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return inode, h.kernelHandle(), fuseFlags, 0
}

// createName makes the new file name (O_EXCL, never through a symlink)
// and gives it to the caller through its own descriptor.
func (n *node) createName(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (ch *gofs.Inode, fd int, errno syscall.Errno) {
	fd = -1
	errno = n.inDir(false, func(dir int) syscall.Errno {
		ch, fd, errno = n.createIn(ctx, dir, name, flags, mode, out)
		return errno
	})
	return ch, fd, errno
}

func (n *node) createIn(ctx context.Context, dir int, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, int, syscall.Errno) {
	open := int(flags&^syscall.O_APPEND)&^unix.O_TRUNC | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dir, name, open, mode&07777)
	if err != nil {
		return nil, -1, gofs.ToErrno(err)
	}
	if uid, gid, ok := callerIDs(ctx); ok {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			unix.Close(fd)
			unix.Unlinkat(dir, name, 0)
			return nil, -1, gofs.ToErrno(err)
		}
		// Giving the new file to its caller cleared the set-ID bits it
		// was made with, which the creator may have.
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Mode&07777 != mode&07777 {
			unix.Fchmod(fd, mode&07777)
		}
	}
	ch, errno := n.child(ctx, name, fd, out)
	if errno != 0 {
		unix.Close(fd)
		unix.Unlinkat(dir, name, 0)
		return nil, -1, errno
	}
	return ch, fd, 0
}

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	errno := n.setattr(ctx, f, in, out)
	if errno == 0 {
		n.fs.changed(Change{Ino: n.ino()})
	}
	return errno
}

func (n *node) setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if fsa, ok := f.(gofs.FileSetattrer); ok && f != nil {
		// The handle's own descriptor (ftruncate and the like).
		if errno := fsa.Setattr(ctx, in, out); errno != 0 {
			return errno
		}
		if fga, ok := f.(gofs.FileGetattrer); ok {
			return fga.Getattr(ctx, out)
		}
		return 0
	}
	return n.withFD(func(fd int) syscall.Errno {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return gofs.ToErrno(err)
		}
		_, sized := in.GetSize()
		if st.Mode&unix.S_IFMT == unix.S_IFREG && (sized || hasTimes(in)) {
			// Size and time changes of a possible stub go through a
			// handle of the file (the DM protocol).
			rw, err := reopen(fd, unix.O_RDWR|unix.O_NONBLOCK)
			if err == nil {
				h, _, errno := n.fs.newHandleMode(ctx, rw, n.relPath(), unix.O_RDWR, modeNone)
				if errno != 0 {
					return errno
				}
				defer h.Release(ctx)
				return h.Setattr(ctx, in, out)
			}
			if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.ETXTBSY) && !errors.Is(err, unix.EROFS) {
				return gofs.ToErrno(err)
			}
		}
		return setattrFD(fd, in, out)
	})
}

func hasTimes(in *fuse.SetAttrIn) bool {
	_, a := in.GetATime()
	_, m := in.GetMTime()
	return a || m
}

// Unlink of the last link of a stub queues a durable DESTROY of its object.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if !nameOK(name) {
		return syscall.EINVAL
	}
	errno := n.inDir(true, func(dir int) syscall.Errno {
		return n.fs.destroying(dir, name, n.relPath()+"/"+name, func() error {
			return unix.Unlinkat(dir, name, 0)
		})
	})
	if errno == 0 {
		n.fs.changed(Change{Entries: []Entry{{n.ino(), name}}})
	}
	return errno
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if !nameOK(name) {
		return syscall.EINVAL
	}
	errno := n.inDir(false, func(dir int) syscall.Errno {
		return gofs.ToErrno(unix.Unlinkat(dir, name, unix.AT_REMOVEDIR))
	})
	if errno == 0 {
		n.fs.changed(Change{Entries: []Entry{{n.ino(), name}}})
	}
	return errno
}

// Rename over an existing stub destroys the stub's object like an unlink.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if !nameOK(name) || !nameOK(newName) {
		return syscall.EINVAL
	}
	exchange, journal := flags&unix.RENAME_EXCHANGE != 0, false
	errno := n.inDir(false, func(from int) syscall.Errno {
		return np.inDir(true, func(to int) syscall.Errno {
			rename := func() error { return unix.Renameat2(from, name, to, newName, uint(flags)) }
			var errno syscall.Errno
			if exchange {
				errno = gofs.ToErrno(rename())
			} else {
				errno = n.fs.destroying(to, newName, np.relPath()+"/"+newName, rename)
			}
			journal = errno == 0 && n.fs.opts.Renamed != nil &&
				(namesArchivedData(to, newName) || exchange && namesArchivedData(from, name))
			return errno
		})
	})
	if errno == 0 {
		n.fs.changed(Change{Entries: []Entry{{n.ino(), name}, {np.ino(), newName}}})
	}
	if journal {
		n.fs.opts.Renamed(n.relPath()+"/"+name, np.relPath()+"/"+newName, exchange)
	}
	return errno
}

// namesArchivedData reports whether the entry name of dir is what the
// archive's namespace journal follows: a directory, or a file with a stub
// record (or one that cannot be read).
func namesArchivedData(dir int, name string) bool {
	var st unix.Stat_t
	if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return false
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return true
	case unix.S_IFREG:
		fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOATIME|unix.O_CLOEXEC, 0)
		if err != nil {
			return true
		}
		defer unix.Close(fd)
		rec, err := stub.ReadRecord(fd)
		return err != nil || rec != nil
	}
	return false
}

// destroying runs op, which removes the entry name of directory dir (an
// open, syncable descriptor; p labels it), and destroys the archive object
// of the stub it named unless the file still uses it afterwards (another
// hard link: the DESTROY queue looks at the file by its handle before it
// deletes anything). Record commits of the file wait meanwhile, so a
// premigration cannot record an object on a file that is being removed.
func (f *FS) destroying(dir int, name, p string, op func() error) syscall.Errno {
	pfd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return gofs.ToErrno(op())
	}
	var st unix.Stat_t
	if unix.Fstat(pfd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(pfd)
		return gofs.ToErrno(op())
	}
	// Only a regular file is opened for real (never a device or a fifo).
	fd, err := reopen(pfd, unix.O_RDONLY|unix.O_NONBLOCK)
	unix.Close(pfd)
	if err != nil {
		return gofs.ToErrno(op())
	}
	defer unix.Close(fd)
	g := f.gates.get(st.Ino)
	defer f.gates.put(st.Ino)
	g.io.Lock()
	defer g.io.Unlock()
	// Other nodes' commits too: a premigration committed on the owner
	// between our look at the record and the unlink would leak its object.
	unlock, err := stub.LockCommit(fd, true)
	if err != nil {
		f.log.Error("cannot take the commit lock; unlink refused", "file", p, "reason", err)
		return syscall.EIO
	}
	defer unlock()
	rec, err := stub.ReadRecord(fd)
	if err != nil {
		f.log.Error("unlink of a file whose stub record is unreadable; its archive object is left", "file", p, "reason", err)
	}
	if rec == nil {
		return gofs.ToErrno(op())
	}
	token, err := f.opts.Events.Prepare(fd, p, rec.Key, dmapi.Deleted)
	if err != nil {
		f.log.Error("cannot queue DESTROY; unlink refused", "file", p, "reason", err)
		return syscall.EIO
	}
	if err := failpoint.Hit(failpoint.DestroyBeforeUnlink); err != nil {
		f.opts.Events.Abort(token)
		return syscall.EIO
	}
	if err := op(); err != nil {
		f.opts.Events.Abort(token)
		return gofs.ToErrno(err)
	}
	// The name must be gone for good before its object may go: a crash
	// that brought the name back would leave a stub without an object.
	// If the sync fails the entry stays prepared, resolved at the next
	// start by looking at the file.
	if err := unix.Fsync(dir); err != nil {
		f.log.Error("cannot sync the directory of a removed stub; its object is kept until the next start", "file", p, "reason", err)
		return 0
	}
	f.opts.Events.Commit(token)
	return 0
}

func hidden(attr string) bool { return strings.HasPrefix(attr, stub.XattrPrefix) }

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if hidden(attr) {
		return 0, syscall.ENODATA
	}
	var sz int
	errno := n.withXattrPath(func(p string) (errno syscall.Errno) {
		var err error
		sz, err = unix.Getxattr(p, attr, dest)
		return gofs.ToErrno(err)
	})
	if errno == syscall.EPERM {
		errno = syscall.ENODATA // a symlink's
	}
	return uint32(sz), errno
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if hidden(attr) {
		return syscall.EPERM
	}
	return n.withXattrPath(func(p string) syscall.Errno {
		return gofs.ToErrno(unix.Setxattr(p, attr, data, int(flags)))
	})
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if hidden(attr) {
		return syscall.EPERM
	}
	return n.withXattrPath(func(p string) syscall.Errno {
		return gofs.ToErrno(unix.Removexattr(p, attr))
	})
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var buf []byte
	errno := n.withXattrPath(func(p string) syscall.Errno {
		sz, err := unix.Listxattr(p, nil)
		if err != nil {
			return gofs.ToErrno(err)
		}
		buf = make([]byte, sz+64)
		sz, err = unix.Listxattr(p, buf)
		buf = buf[:max(sz, 0)]
		return gofs.ToErrno(err)
	})
	if errno == syscall.EPERM {
		buf, errno = nil, 0 // a symlink's: none shown
	}
	if errno != 0 {
		return 0, errno
	}
	var out []byte
	for _, name := range strings.Split(string(buf), "\x00") {
		if name != "" && !hidden(name) {
			out = append(append(out, name...), 0)
		}
	}
	if len(dest) == 0 {
		return uint32(len(out)), 0
	}
	if len(dest) < len(out) {
		return uint32(len(out)), syscall.ERANGE
	}
	return uint32(copy(dest, out)), 0
}

// CopyFileRange is refused so that the kernel copies through read and
// write: a backing-level copy would read a stub's holes as zeros.
func (n *node) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64, out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}
