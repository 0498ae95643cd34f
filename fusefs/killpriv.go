package fusefs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// With CAP_HANDLE_KILLPRIV_V2 the kernel no longer asks us for
// security.capability before every write (one round trip per write, the
// main cost of small writes), and leaves to us the clearing of the
// set-user-ID and set-group-ID bits on a write, truncate or O_TRUNC open
// by a caller without CAP_FSETID, which it flags in the request. The
// backing filesystem clears security.capability by itself on our writes,
// truncates and chowns, and the set-ID bits on chown; the daemon's own
// writes keep set-ID bits (it has CAP_FSETID), so those are ours to clear.
//
// go-fuse's node API drops the request's flags, so killPrivFS notes which
// requests carry them, keyed by the request's cancel channel (unique among
// requests in flight), where the handle finds it through its context.
type killPrivFS struct {
	fuse.RawFileSystem
	flagged sync.Map // <-chan struct{} -> struct{}
}

func (k *killPrivFS) mark(cancel <-chan struct{}) func() {
	k.flagged.Store(cancel, struct{}{})
	return func() { k.flagged.Delete(cancel) }
}

func (k *killPrivFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		defer k.mark(cancel)()
	}
	return k.RawFileSystem.Write(cancel, in, data)
}

func (k *killPrivFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		defer k.mark(cancel)()
	}
	return k.RawFileSystem.Writev(cancel, in, data)
}

// Open: the kernel puts FUSE_OPEN_KILL_SUIDGID into open_flags (go-fuse's
// OpenIn.Mode) for an O_TRUNC open by a caller without CAP_FSETID.
func (k *killPrivFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Mode&fuse.OPEN_KILL_SUIDGID != 0 {
		defer k.mark(cancel)()
	}
	return k.RawFileSystem.Open(cancel, in, out)
}

func (k *killPrivFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if in.OpenFlags&fuse.OPEN_KILL_SUIDGID != 0 {
		defer k.mark(cancel)()
	}
	return k.RawFileSystem.Create(cancel, in, name, out)
}

// killRequested reports whether the kernel flagged the request of ctx.
func (f *FS) killRequested(ctx context.Context) bool {
	fc, ok := ctx.(*fuse.Context)
	if !ok || f.killPriv == nil {
		return false
	}
	_, ok = f.killPriv.flagged.Load(fc.Cancel)
	return ok
}

// setIDBits are the bits of mode a change by an unprivileged caller
// clears: set-user-ID, and set-group-ID when group execute is on (without
// it the bit means mandatory locking, and stays).
func setIDBits(mode uint32) uint32 {
	bits := mode & unix.S_ISUID
	if mode&unix.S_ISGID != 0 && mode&unix.S_IXGRP != 0 {
		bits |= unix.S_ISGID
	}
	return bits
}

// dropSetID clears fd's set-ID bits, as the kernel does for a write or
// truncate by an unprivileged caller.
func dropSetID(fd int) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err.(syscall.Errno)
	}
	if bits := setIDBits(st.Mode); bits != 0 {
		if err := unix.Fchmod(fd, st.Mode&07777&^bits); err != nil {
			return err.(syscall.Errno)
		}
	}
	return 0
}

// unprivileged reports a caller other than root: where the kernel does
// not flag a request, the best guess of a caller without CAP_FSETID.
func unprivileged(ctx context.Context) bool {
	fc, ok := ctx.(*fuse.Context)
	return ok && fc.Caller.Uid != 0
}
