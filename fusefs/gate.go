package fusefs

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
)

// gate is the per-file (backing inode) coordination between users of the
// mount and the DM application: open handles by I/O mode, writes in
// progress, and releases that hold new opens.
type gate struct {
	io sync.RWMutex // writers hold it shared; a record commit holds it exclusively

	mu          sync.Mutex
	opens       int
	passthrough int // handles the kernel serves directly (FOPEN_PASSTHROUGH)
	cached      int // handles in the kernel's cached I/O mode
	held        int // releases in progress: new opens wait
	writers     int // handles open for writing

	refs int // guarded by gates.mu
}

type gates struct {
	mu sync.Mutex
	m  map[uint64]*gate
}

func (gs *gates) get(ino uint64) *gate {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if gs.m == nil {
		gs.m = map[uint64]*gate{}
	}
	g := gs.m[ino]
	if g == nil {
		g = &gate{}
		gs.m[ino] = g
	}
	g.refs++
	return g
}

func (gs *gates) put(ino uint64) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if g := gs.m[ino]; g != nil {
		if g.refs--; g.refs == 0 {
			delete(gs.m, ino)
		}
	}
}

// waitUnheld blocks a new open while a release of the file is in progress.
func (g *gate) waitUnheld(ctx context.Context) error {
	for {
		g.mu.Lock()
		if g.held == 0 {
			return nil // caller unlocks
		}
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Commit implements migrate.Gate.
func (f *FS) Commit(ino uint64, fn func() error) error {
	g := f.gates.get(ino)
	defer f.gates.put(ino)
	g.io.Lock()
	defer g.io.Unlock()
	return fn()
}

// CommitCopy implements migrate.Gate: Commit, refused (dmapi.ErrBusy)
// while a handle has the file open for writing, since such a handle may
// write at any moment without us (kernel passthrough).
func (f *FS) CommitCopy(ino uint64, fn func() error) error {
	g := f.gates.get(ino)
	defer f.gates.put(ino)
	g.io.Lock()
	defer g.io.Unlock()
	g.mu.Lock()
	writers := g.writers
	g.mu.Unlock()
	if writers > 0 {
		return fmt.Errorf("open for writing: %w", dmapi.ErrBusy)
	}
	return fn()
}

// Release implements migrate.Gate: it holds new opens, waits up to wait for
// open handles to close, and runs fn with writes excluded.
func (f *FS) Release(ctx context.Context, ino uint64, wait time.Duration, fn func(confirm func() error) error) error {
	unhold, err := f.Hold(ctx, ino, wait)
	if err != nil {
		return err
	}
	defer unhold()
	g := f.gates.get(ino)
	defer f.gates.put(ino)
	g.io.Lock()
	defer g.io.Unlock()
	return fn(func() error { return nil }) // held here until unhold: nothing can end
}

// Hold holds new opens of the file and waits up to wait for its open
// handles to close; on success the file stays closed here until unhold.
// Other nodes' releases use it through the node RPC.
func (f *FS) Hold(ctx context.Context, ino uint64, wait time.Duration) (unhold func(), err error) {
	g := f.gates.get(ino)
	g.mu.Lock()
	g.held++
	g.mu.Unlock()
	var once sync.Once
	unhold = func() {
		once.Do(func() {
			g.mu.Lock()
			g.held--
			g.mu.Unlock()
			f.gates.put(ino)
		})
	}
	deadline := time.Now().Add(wait)
	for {
		g.mu.Lock()
		open := g.opens
		g.mu.Unlock()
		if open == 0 {
			return unhold, nil
		}
		if time.Now().After(deadline) {
			unhold()
			return nil, fmt.Errorf("%d open handle(s): %w", open, dmapi.ErrBusy)
		}
		select {
		case <-ctx.Done():
			unhold()
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// OpenCount returns the number of handles open on the file through the mount.
func (f *FS) OpenCount(ino uint64) int {
	f.gates.mu.Lock()
	defer f.gates.mu.Unlock()
	if g := f.gates.m[ino]; g != nil {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.opens
	}
	return 0
}
