package dmapi

import (
	"errors"
	"fmt"
	"sync"
)

// ErrBusy: the file stayed open through the mount, so its data could not be
// released; the release was skipped.
var ErrBusy = errors.New("file is open")

// ErrPeerDown: a node that mounts the filesystem is not alive, so nobody
// can confirm the file is closed there; no release can happen until it is
// back (or has left). It is a kind of ErrBusy.
var ErrPeerDown = fmt.Errorf("a node that mounts the filesystem is down: %w", ErrBusy)

// Rights are the per-file DM access rights: a migration holds a file's
// right exclusively, recalls hold it shared, so no migration runs while a
// recall writes the same file and vice versa. A waiting exclusive holder
// keeps new shared holders out, so a stream of recalls cannot starve it.
type Rights struct {
	mu    sync.Mutex
	files map[uint64]*right
}

type right struct {
	shared        int
	exclusive     bool
	waiting       int // exclusive takers waiting
	sharedWaiting int // shared takers waiting
	cond          sync.Cond
}

func (r *Rights) get(ino uint64) *right {
	if r.files == nil {
		r.files = map[uint64]*right{}
	}
	e := r.files[ino]
	if e == nil {
		e = &right{}
		e.cond.L = &r.mu
		r.files[ino] = e
	}
	return e
}

// done drops the entry of a file nobody holds or waits for; r.mu is held.
// A shared taker that waits counts too: dropped under it, its entry would
// be one nobody else sees, and an exclusive taker would not wait for it.
func (r *Rights) done(ino uint64, e *right) {
	e.cond.Broadcast()
	if e.shared == 0 && !e.exclusive && e.waiting == 0 && e.sharedWaiting == 0 && r.files[ino] == e {
		delete(r.files, ino)
	}
}

// Exclusive takes the file's right exclusively and returns its release.
func (r *Rights) Exclusive(ino uint64) (release func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.get(ino)
	e.waiting++
	for e.exclusive || e.shared > 0 {
		e.cond.Wait()
	}
	e.waiting--
	e.exclusive = true
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		e.exclusive = false
		r.done(ino, e)
	}
}

// TryExclusive takes the file's right exclusively if nobody holds or waits
// for it; ok is false otherwise (the space monitor skips such a file).
func (r *Rights) TryExclusive(ino uint64) (release func(), ok bool) {
	r.mu.Lock()
	e := r.get(ino)
	if e.exclusive || e.shared > 0 || e.waiting > 0 {
		r.done(ino, e)
		r.mu.Unlock()
		return nil, false
	}
	r.mu.Unlock()
	return r.Exclusive(ino), true
}

// Shared takes the file's right shared and returns its release.
func (r *Rights) Shared(ino uint64) (release func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.get(ino)
	e.sharedWaiting++
	for e.exclusive || e.waiting > 0 {
		e.cond.Wait()
	}
	e.sharedWaiting--
	return r.addShared(ino, e)
}

// Share lets a holder of the shared right hand one more share to work that
// outlives it (a recall stream that goes on after its reader left). It never
// waits, so it cannot deadlock behind a waiting exclusive taker.
func (r *Rights) Share(ino uint64) (release func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.files[ino]
	if e == nil || e.shared == 0 {
		panic("dmapi: Share without a shared right")
	}
	return r.addShared(ino, e)
}

func (r *Rights) addShared(ino uint64, e *right) func() {
	e.shared++
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			e.shared--
			r.done(ino, e)
		})
	}
}
