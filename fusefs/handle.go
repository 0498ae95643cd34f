package fusefs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/stub"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ioMode is how the kernel serves a handle.
type ioMode uint8

const (
	modeNone        ioMode = iota // internal handle, not seen by the kernel
	modeCached                    // kernel page cache, reads come to us
	modePassthrough               // the kernel reads and writes the backing file itself
	// modeCountedWrites asks for modeCached so that writes are counted
	// against the quota, unless the file has passthrough opens already.
	modeCountedWrites
)

// errNeedResident: the file has passthrough handles open, so the kernel
// accepts only passthrough opens of it, and this one needs the file made
// resident first (a write open of a premigrated file).
const errNeedResident = syscall.EAGAIN

// handle is an open file of the mount. Reads of migrated regions raise READ
// events; the first change of a file with a stub record raises WRITE or
// TRUNCATE so the DM application makes it resident first.
type handle struct {
	lf   *gofs.LoopbackFile
	fd   int
	fs   *FS
	path string // backing-relative path at open
	ino  uint64
	g    *gate
	mode ioMode

	fhOnce sync.Once
	fh     []byte      // file handle, for events (made on first use)
	wrote  atomic.Bool // changed through this handle since the last flush
	// writable: open for writing; counted in g.writers, and its close
	// removes the file's watch.
	writable bool
	// unshield drops the read shield the handle holds (nil: it could
	// not get it, a release held it): no release punches the file while
	// the kernel may read it by passthrough, and a shielded handle may
	// trust what it once found resident.
	unshield func()
	resident residentSpans // what a shielded handle knows is data
	// cancelled: when an admin last cancelled a recall this handle waited
	// for (unix ns). The kernel retries a failed readahead page with one
	// read of its own; that read must fail too, not raise a new recall.
	cancelled atomic.Int64
}

// cancelEcho is how long after a cancel the handle's reads still fail.
const cancelEcho = 2 * time.Second

// ptHandle is a handle the kernel may serve by passthrough. Only fully
// resident files get one: the kernel would read a stub's holes as zeros.
type ptHandle struct{ *handle }

func (h ptHandle) PassthroughFd() (int, bool) { return h.lf.PassthroughFd() }

var (
	_ = (gofs.FileReader)((*handle)(nil))
	_ = (gofs.FileWriter)((*handle)(nil))
	_ = (gofs.FileReleaser)((*handle)(nil))
	_ = (gofs.FileGetattrer)((*handle)(nil))
	_ = (gofs.FileSetattrer)((*handle)(nil))
	_ = (gofs.FileFlusher)((*handle)(nil))
	_ = (gofs.FileFsyncer)((*handle)(nil))
	_ = (gofs.FileAllocater)((*handle)(nil))
	_ = (gofs.FileLseeker)((*handle)(nil))
	_ = (gofs.FileGetlker)((*handle)(nil))
	_ = (gofs.FileSetlker)((*handle)(nil))
	_ = (gofs.FileSetlkwer)((*handle)(nil))
	_ = (gofs.FilePassthroughFder)(ptHandle{})
)

// kernelHandle is what go-fuse gets: only passthrough handles offer an fd.
func (h *handle) kernelHandle() gofs.FileHandle {
	if h.mode == modePassthrough {
		return ptHandle{h}
	}
	return h
}

func (f *FS) newHandle(ctx context.Context, fd int, path string, flags uint32) (*handle, uint32, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, gofs.ToErrno(err)
	}
	// Passthrough for what needs no event: reads of data that is all here,
	// writes of files without a stub record.
	mode := modeCached
	if st.Mode&unix.S_IFMT == unix.S_IFREG && f.passthrough {
		rec, err := stub.ReadRecordOf(fd, st.Ino)
		if err != nil {
			f.log.Error("stub record unreadable", "file", path, "reason", err)
			unix.Close(fd)
			return nil, 0, syscall.EIO
		}
		readOnly := flags&unix.O_ACCMODE == unix.O_RDONLY && flags&unix.O_TRUNC == 0
		switch {
		case rec == nil && !readOnly && setIDBits(st.Mode) != 0:
			// The kernel does not tell us of passthrough writes, and
			// their set-ID bits must go at the first write by an
			// unprivileged caller: such writes come to us.
			mode = modeCached
		case rec == nil && !readOnly && f.space.countWrites(ctx):
			// Under a quota or near full, writes must come to us.
			mode = modeCountedWrites
		case rec == nil || (readOnly && rec.State == stub.Premigrated):
			mode = modePassthrough
		}
	}
	return f.newHandleMode(ctx, fd, path, flags, mode)
}

// passthroughUnder decides, under the read shield (shielded), whether fd
// may be served by passthrough: the record is read again under it (a
// release may have punched since the caller's look), and only a resident
// file or a read of a premigrated one qualifies. Without the shield (a
// release holds it) the open is a cached one.
func passthroughUnder(fd int, flags uint32, shielded bool) ioMode {
	if !shielded {
		return modeCached
	}
	rec, err := stub.ReadRecord(fd)
	readOnly := flags&unix.O_ACCMODE == unix.O_RDONLY && flags&unix.O_TRUNC == 0
	if err != nil || (rec != nil && !(readOnly && rec.State == stub.Premigrated)) {
		return modeCached
	}
	return modePassthrough
}

// newHandleMode registers the handle with the file's gate, waiting while a
// release is in progress, and settles its I/O mode so that the kernel never
// sees a cached and a passthrough open of one inode at once.
func (f *FS) newHandleMode(ctx context.Context, fd int, path string, flags uint32, mode ioMode) (*handle, uint32, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, gofs.ToErrno(err)
	}
	g := f.gates.get(st.Ino)
	if err := g.waitUnheld(ctx); err != nil {
		f.gates.put(st.Ino)
		unix.Close(fd)
		return nil, 0, syscall.EINTR
	}
	// The read shield first, for every open of a regular file the kernel
	// sees: a release must take it before its punch, which it cannot
	// while we hold it, so reads may trust what they found resident and
	// passthrough reads never meet a punch. A release that holds it now
	// makes this open an unshielded cached one.
	var unshield func()
	if mode != modeNone && st.Mode&unix.S_IFMT == unix.S_IFREG {
		unshield, _ = stub.ShieldReads(fd)
	}
	// g.mu is held from here.
	fail := func(errno syscall.Errno) (*handle, uint32, syscall.Errno) {
		if unshield != nil {
			unshield()
		}
		g.mu.Unlock()
		f.gates.put(st.Ino)
		unix.Close(fd)
		return nil, 0, errno
	}
	// The record may have changed while we waited (a release that held
	// this open has since written "migrated" and punched): passthrough
	// decided from the record read before would read holes as zeros.
	// Read again even when this open did not wait: a whole release may
	// have run between that read and now.
	if mode == modePassthrough {
		mode = passthroughUnder(fd, flags, unshield != nil)
	}
	// A write open may change the file at any moment (by passthrough,
	// without us): a copy being made now is stale. Removed before the
	// open counts, so a commit either sees the writer or misses the watch.
	writable := mode != modeNone && flags&unix.O_ACCMODE != unix.O_RDONLY && st.Mode&unix.S_IFMT == unix.S_IFREG
	if writable {
		if err := stub.Unwatch(fd); err != nil {
			f.log.Error("cannot mark the file changed; write open refused", "file", path, "reason", err)
			return fail(syscall.EIO)
		}
	}
	// The kernel's rule: while an inode has passthrough opens, every open
	// of it must be passthrough (else EIO). And go-fuse (v2.12.1) drops
	// its backing-file reference on every release, so a passthrough open
	// may only join passthrough opens, never cached ones.
	switch {
	case mode == modeCountedWrites && g.passthrough > 0:
		// The kernel insists; these writes go uncounted. Caught in a
		// release, the open is cached and the file made resident.
		mode = passthroughUnder(fd, flags, unshield != nil)
	case mode == modeCached && g.passthrough > 0 && writable && setIDBits(st.Mode) != 0 && unprivileged(ctx):
		// A write open of a set-ID file that the kernel insists be
		// passthrough: its writes will not come to us, so its set-ID
		// bits go now, as its first write would drop them.
		if errno := dropSetID(fd); errno != 0 {
			return fail(errno)
		}
		mode = passthroughUnder(fd, flags, unshield != nil)
	case mode == modeCountedWrites:
		mode = modeCached
	case mode == modePassthrough && g.cached > 0:
		mode = modeCached
	}
	if mode == modePassthrough {
		// The kernel takes the first passthrough open's descriptor as the
		// inode's backing file and keeps it while any passthrough open
		// lasts, even past a kill -9 of this daemon: the shield held on
		// that very description lasts as long, so a restarted daemon (or
		// any node) cannot punch the file under those handles.
		var err error
		if fd, err = kernelShield(fd); err != nil {
			f.log.Warn("passthrough open without a shield that outlives the daemon; served by the daemon instead", "file", path, "reason", err)
			mode = modeCached
		}
	}
	if mode == modeCached && g.passthrough > 0 {
		return fail(errNeedResident)
	}
	switch mode {
	case modePassthrough:
		g.passthrough++
	case modeCached:
		g.cached++
	}
	if mode != modeNone {
		g.opens++
	}
	if writable {
		g.writers++
	}
	g.mu.Unlock()
	h := &handle{lf: gofs.NewLoopbackFile(fd).(*gofs.LoopbackFile), fd: fd, fs: f, path: path, ino: st.Ino, g: g, mode: mode, writable: writable, unshield: unshield}
	if mode == modePassthrough && flags&unix.O_ACCMODE != unix.O_RDONLY {
		h.wrote.Store(true) // its writes bypass us: assume it changes the file
	}
	return h, 0, 0
}

// kernelShield holds the read shield on fd's own description (see
// stub.ShieldReadsOn), first reopening a write-only fd for reading and
// writing (a read lock needs read access; the kernel still lets the
// caller only write). It returns the descriptor to use.
func kernelShield(fd int) (int, error) {
	if protect.Off(protect.KernelShield) {
		return fd, nil
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fd, err
	}
	if fl&unix.O_ACCMODE == unix.O_WRONLY {
		// Only the flags that matter to I/O carry over: the magic link
		// must be followed (no O_NOFOLLOW), and nothing is created anew.
		keep := fl & (unix.O_APPEND | unix.O_NONBLOCK | unix.O_DIRECT | unix.O_NOATIME | unix.O_SYNC | unix.O_DSYNC | unix.O_LARGEFILE)
		rw, err := reopen(fd, keep|unix.O_RDWR)
		if err != nil {
			return fd, err
		}
		unix.Close(fd)
		fd = rw
	}
	return fd, stub.ShieldReadsOn(fd)
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.writable {
		// Whatever it wrote by passthrough (unseen) is in now: a copy
		// made while it was open is stale.
		if err := stub.Unwatch(h.fd); err != nil {
			h.fs.log.Error("cannot mark a written file changed", "file", h.path, "reason", err)
		}
	}
	errno := h.lf.Release(ctx)
	if h.unshield != nil {
		h.unshield()
	}
	h.g.mu.Lock()
	if h.writable {
		h.g.writers--
	}
	switch h.mode {
	case modePassthrough:
		h.g.passthrough--
	case modeCached:
		h.g.cached--
	}
	if h.mode != modeNone {
		h.g.opens--
	}
	h.g.mu.Unlock()
	h.fs.gates.put(h.ino)
	return errno
}

// record reads the current stub record; a corrupt one is logged and EIO.
func (h *handle) record() (*stub.Record, syscall.Errno) {
	rec, err := stub.ReadRecordOf(h.fd, h.ino)
	if err != nil {
		h.fs.log.Error("stub record unreadable", "file", h.path, "reason", err)
		return nil, syscall.EIO
	}
	return rec, 0
}

func (h *handle) event(t dmapi.Type, off, length int64) *dmapi.Event {
	h.fhOnce.Do(func() { h.fh, _ = stub.HandleOf(h.fd) }) // without one, the path serves
	return &dmapi.Event{Type: t, FS: h.fs.opts.Name, Path: h.path, Ino: h.ino, Offset: off, Length: length, Handle: h.fh}
}

// raise sends an event and maps its outcome to an errno.
func (h *handle) raise(ctx context.Context, ev *dmapi.Event) syscall.Errno {
	if fc, ok := ctx.(*fuse.Context); ok {
		ev.UID = fc.Caller.Uid // workers and the recall rate are shared between users
	}
	start := time.Now()
	err := h.fs.opts.Events.Raise(ctx, ev)
	if ev.Type == dmapi.Read {
		h.fs.opts.Metrics.Observe(metrics.RecallSeconds, time.Since(start).Seconds(), "fs", ev.FS)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, dmapi.ErrCanceled):
		h.fs.log.Info("recall cancelled by an admin; the reader gets ECANCELED", "file", ev.Path, "offset", ev.Offset)
		h.cancelled.Store(time.Now().UnixNano())
		return syscall.ECANCELED
	default:
		// Every EIO a reader gets is logged with its cause, a timeout too.
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, dmapi.ErrTimeout) {
			err = fmt.Errorf("no answer within the event timeout: %w", err)
		}
		h.fs.log.Error("DM event failed; the caller gets EIO", "event", ev.Type.String(), "file", ev.Path, "offset", ev.Offset, "reason", err)
		return syscall.EIO
	}
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.unshield != nil {
		return h.readShielded(ctx, dest, off)
	}
	for attempt := 0; ; attempt++ {
		rec, _, served, errno := h.residentFrom(ctx, off, int64(len(dest)), dest)
		if errno != 0 {
			return nil, errno
		}
		if served != nil {
			return served, 0
		}
		if rec == nil || rec.State != stub.Migrated {
			return h.lf.Read(ctx, dest, off)
		}
		// A stub is read here and looked at again after: a release that
		// punches it meanwhile (an old owner that woke up after its
		// holds ended) leaves a hole in what was read, and the read
		// goes round through a recall instead of returning zeros.
		n, err := unix.Pread(h.fd, dest, off)
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		hole, err := stub.FirstMissing(h.fd, rec, off, off+int64(n))
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		if hole >= off+int64(n) {
			return fuse.ReadResultData(dest[:n]), 0
		}
		if attempt == 2 {
			h.fs.log.Error("stub punched again under the reader three times; the reader gets EIO", "file", h.path, "offset", off)
			return nil, syscall.EIO // never zeros for data
		}
	}
}

// readShielded serves a read of a handle holding the read shield: no
// release can punch the file while it is open, so what was found
// resident once stays so, and a read of it needs neither the record nor
// a look for holes.
func (h *handle) readShielded(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if !h.resident.covers(off, off+int64(len(dest))) {
		rec, to, served, errno := h.residentFrom(ctx, off, int64(len(dest)), dest)
		if errno != 0 {
			return nil, errno
		}
		if served != nil {
			// From the recall's memory: maybe not in the file yet,
			// so nothing is marked resident.
			return served, 0
		}
		if rec == nil || rec.State != stub.Migrated {
			h.resident.all()
		} else {
			// Past the size is no stub's business: reads there are short.
			h.resident.add(off, max(to, off+int64(len(dest))))
		}
	}
	return h.lf.Read(ctx, dest, off)
}

// residentFrom raises READ events until [off, off+n) holds data; it
// returns the record it saw last (nil for a file without one) and where
// the data found from off ends (the next hole, or the size), for a stub. Given dest (a
// read of n bytes), the DM application may instead fill it with the
// bytes it recalled, from memory before they reach the backing file:
// served is then the reply (up to the size).
func (h *handle) residentFrom(ctx context.Context, off, n int64, dest []byte) (rec *stub.Record, to int64, served fuse.ReadResult, errno syscall.Errno) {
	rec, errno = h.record()
	if errno != 0 || rec == nil || rec.State != stub.Migrated {
		return rec, 0, nil, errno
	}
	end := min(off+n, rec.Size)
	for {
		hole, err := stub.FirstMissing(h.fd, rec, off, rec.Size)
		if err != nil {
			return nil, 0, nil, gofs.ToErrno(err)
		}
		if hole >= end {
			return rec, hole, nil, 0
		}
		if time.Since(time.Unix(0, h.cancelled.Load())) < cancelEcho {
			return nil, 0, nil, syscall.ECANCELED
		}
		ev := h.event(dmapi.Read, 0, -1) // small files are recalled whole
		if rec.Size > h.fs.opts.SmallFile {
			// One event for the rest of this read, in whole regions, so
			// that readers of the same regions share it.
			r := h.fs.opts.Region
			start := hole / r * r
			ev.Offset, ev.Length = start, min((end+r-1)/r*r, rec.Size)-start
		}
		if dest != nil {
			ev.Serve = dmapi.NewServe(off, dest[:min(int64(len(dest)), n)])
		}
		errno := h.raise(ctx, ev)
		if ev.Serve != nil {
			answer, release := ev.Serve.Close()
			if errno == 0 && len(answer) > 0 {
				return rec, 0, &servedReply{answer, release}, 0
			}
			if release != nil {
				release()
			}
		}
		if errno != 0 {
			return nil, 0, nil, errno
		}
		if rec, errno = h.record(); errno != 0 || rec == nil || rec.State != stub.Migrated {
			return rec, 0, nil, errno // resident now: any hole left is a real one
		}
	}
}

// makeResident raises a WRITE event for n's file so that the DM
// application drops its stub record.
func (n *node) makeResident(ctx context.Context) syscall.Errno {
	fd, err := n.open(unix.O_RDONLY | unix.O_NONBLOCK)
	if err != nil {
		return gofs.ToErrno(err)
	}
	h, _, errno := n.fs.newHandleMode(ctx, fd, n.relPath(), unix.O_RDONLY, modeNone)
	if errno != 0 {
		return errno
	}
	defer h.Release(ctx)
	return h.raise(ctx, h.event(dmapi.Write, 0, -1))
}

// forChange runs change with the file resident and writes through the mount
// excluded from record commits. A file with a record is made resident first
// (the lock is dropped meanwhile: the recall must be able to take the DM right).
func (h *handle) forChange(ctx context.Context, t dmapi.Type, change func() syscall.Errno) syscall.Errno {
	for round := 0; ; round++ {
		if round == 3 {
			h.fs.log.Error("file keeps a stub record after being made resident", "file", h.path)
			return syscall.EIO
		}
		h.g.io.RLock()
		rec, errno := h.record()
		if errno != 0 {
			h.g.io.RUnlock()
			return errno
		}
		if rec == nil {
			defer h.g.io.RUnlock()
			h.wrote.Store(true)
			// A handle open for writing removed the watch at its open
			// and does again at its close (and blocks commits meanwhile):
			// no getxattr per write.
			if !h.writable {
				if err := stub.Unwatch(h.fd); err != nil {
					return gofs.ToErrno(err)
				}
			}
			return change()
		}
		h.g.io.RUnlock()
		if errno := h.raise(ctx, h.event(t, 0, -1)); errno != 0 {
			return errno
		}
	}
}

// Write keeps the filesystem's quota: a write that would pass it, or that
// fails with ENOSPC, raises an out-of-space event, waits for the space
// monitor's cycle and is tried once more.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.fs.killRequested(ctx) {
		if errno := dropSetID(h.fd); errno != 0 {
			return 0, errno
		}
	}
	space := h.fs.space
	for try := 0; ; try++ {
		var n uint32
		var need int64
		errno := h.forChange(ctx, dmapi.Write, func() (e syscall.Errno) {
			growth := h.growth(off, len(data))
			if space.wouldPass(ctx, growth) {
				need = growth
				return syscall.ENOSPC
			}
			n, e = h.lf.Write(ctx, data, off)
			if e == syscall.ENOSPC {
				need = int64(len(data))
			} else {
				space.grew(growth)
			}
			return e
		})
		if errno != syscall.ENOSPC || try > 0 || space == nil {
			return n, errno
		}
		// Not under the file's I/O lock: the cycle may need other files' locks.
		wait, cancel := context.WithTimeout(ctx, h.fs.opts.SpaceWait)
		errno = space.outOfSpace(wait, need)
		cancel()
		if errno != 0 {
			h.fs.log.Warn("write refused: out of space", "file", h.path, "bytes", need)
			return 0, errno
		}
	}
}

// growth is how many bytes a write of n at off adds to the file's size;
// it costs an fstat, so only under a quota (or before one is known).
func (h *handle) growth(off int64, n int) int64 {
	var st unix.Stat_t
	if !h.fs.space.mayHaveQuota() || unix.Fstat(h.fd, &st) != nil {
		return 0
	}
	return max(0, off+int64(n)-st.Size)
}

// truncate cuts or extends the file; killSetID: the caller lacks
// CAP_FSETID, so the file's set-ID bits go too.
func (h *handle) truncate(ctx context.Context, size uint64, killSetID bool) syscall.Errno {
	return h.forChange(ctx, dmapi.Truncate, func() syscall.Errno {
		if killSetID {
			if errno := dropSetID(h.fd); errno != 0 {
				return errno
			}
		}
		return gofs.ToErrno(unix.Ftruncate(h.fd, int64(size)))
	})
}

func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return h.forChange(ctx, dmapi.Write, func() syscall.Errno { return h.lf.Allocate(ctx, off, size, mode) })
}

// Setattr: a size change makes a stub resident first; a time change of a
// stub also moves the time in its record, since the data did not change.
func (h *handle) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if errno := h.truncate(ctx, size, in.Valid&fuse.FATTR_KILL_SUIDGID != 0); errno != 0 {
			return errno
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	if !hasTimes(in) {
		return h.lf.Setattr(ctx, in, out)
	}
	h.g.io.Lock() // like a record commit: no write may slip between
	defer h.g.io.Unlock()
	// The record is read and written back under the file's right, which
	// every node honours: a release or recall commit on the owner cannot
	// come between (a premigrated record written back over a punch would
	// serve the holes as data). No lease to check: this is no DM commit.
	var errno syscall.Errno
	err := stub.UnderRight(h.fd, stub.ForChange, nil, func(rec *stub.Record) error {
		var before unix.Stat_t
		unix.Fstat(h.fd, &before)
		movesRecord := rec != nil && rec.Unchanged(&before)
		if !movesRecord {
			// A time change of a file that may be being copied: the copy
			// is not trusted (a writer may restore the mtime to hide its
			// writes).
			if err := stub.Unwatch(h.fd); err != nil {
				return err
			}
		}
		if errno = h.lf.Setattr(ctx, in, out); errno != 0 || !movesRecord {
			return nil
		}
		var after unix.Stat_t
		if err := unix.Fstat(h.fd, &after); err != nil {
			return err
		}
		rec.MtimeNs = stub.MtimeNs(&after)
		return stub.WriteRecord(h.fd, rec)
	})
	if stub.IsCorrupt(err) || errors.Is(err, stub.ErrForeign) {
		h.fs.log.Error("stub record unreadable", "file", h.path, "reason", err)
		return syscall.EIO
	}
	if err != nil {
		return gofs.ToErrno(err)
	}
	return errno
}

// Lseek answers SEEK_DATA and SEEK_HOLE for a stub as for the file it
// stands for: data, but for the hole runs it had when it was copied.
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence == unix.SEEK_DATA || whence == unix.SEEK_HOLE {
		rec, errno := h.record()
		if errno != 0 {
			return 0, errno
		}
		if rec != nil && rec.State == stub.Migrated {
			o := int64(off)
			if o >= rec.Size {
				return 0, syscall.ENXIO
			}
			holeEnd, inHole := rec.HoleEnd(o)
			switch {
			case whence == unix.SEEK_DATA && !inHole:
				return off, 0
			case whence == unix.SEEK_DATA && holeEnd >= rec.Size:
				return 0, syscall.ENXIO
			case whence == unix.SEEK_DATA:
				return uint64(holeEnd), 0
			case inHole:
				return off, 0
			}
			return uint64(rec.DataEnd(o)), 0
		}
	}
	return h.lf.Lseek(ctx, off, whence)
}

func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return h.lf.Getattr(ctx, out)
}

// Flush runs in close(2): a handle that changed the file tells the other
// nodes before close returns (close-to-open consistency).
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	errno := h.lf.Flush(ctx)
	if h.wrote.Swap(false) && h.fs.opts.Written != nil {
		h.fs.opts.Written(h.ino)
	}
	return errno
}
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.lf.Fsync(ctx, flags)
}

// Users' byte-range locks stay below stub.ReservedLocks, where the
// daemon's own locks (commit lock, read shield) live: a user's lock of
// the whole file would otherwise block a release or a recall, and its
// unlock could drop nothing of ours but should not try. A range that
// starts in the reserved area is refused.
const wholeFile = 1<<63 - 1

func userLock(lk *fuse.FileLock) (*fuse.FileLock, syscall.Errno) {
	if lk.Start >= stub.ReservedLocks {
		return nil, syscall.EINVAL
	}
	c := *lk
	if c.End >= stub.ReservedLocks {
		c.End = stub.ReservedLocks - 1
	}
	return &c, 0
}

func (h *handle) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	c, errno := userLock(lk)
	if errno != 0 {
		return errno
	}
	errno = h.lf.Getlk(ctx, owner, c, flags, out)
	if out.Typ != unix.F_UNLCK && out.End == stub.ReservedLocks-1 {
		out.End = wholeFile // a lock of the whole file, clamped by us
	}
	return errno
}
func (h *handle) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	c, errno := userLock(lk)
	if errno != 0 {
		return errno
	}
	return h.lf.Setlk(ctx, owner, c, flags)
}
func (h *handle) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	c, errno := userLock(lk)
	if errno != 0 {
		return errno
	}
	return h.lf.Setlkw(ctx, owner, c, flags)
}

// servedReply is a read answered by the DM application: slices of the
// reader's buffer, or of memory the DM application lends until the reply
// is sent. go-fuse sends Slices with one writev, then calls Done.
type servedReply struct {
	slices  [][]byte
	release func() // gives the lent memory back; nil: none lent
}

func (r *servedReply) Slices() ([][]byte, fuse.Status) { return r.slices, fuse.OK }

func (r *servedReply) Size() int {
	n := 0
	for _, b := range r.slices {
		n += len(b)
	}
	return n
}

// Bytes is the reply in one buffer, for a server that cannot send slices.
func (r *servedReply) Bytes(buf []byte) ([]byte, fuse.Status) {
	if n := r.Size(); cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	buf = buf[:0]
	for _, b := range r.slices {
		buf = append(buf, b...)
	}
	return buf, fuse.OK
}

func (r *servedReply) Done() {
	if r.release != nil {
		r.release()
	}
}
