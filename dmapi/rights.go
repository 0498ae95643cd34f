package dmapi

import (
	"errors"
	"sync"
)

// ErrBusy: the file stayed open through the mount, so its data could not be
// released; the release was skipped.
var ErrBusy = errors.New("file is open")

// Rights are the per-file DM access rights: a migration holds a file's
// right exclusively, recalls hold it shared, so no migration runs while a
// recall writes the same file and vice versa.
type Rights struct {
	mu    sync.Mutex
	files map[uint64]*right
}

type right struct {
	rw   sync.RWMutex
	refs int
}

func (r *Rights) get(ino uint64) *right {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.files == nil {
		r.files = map[uint64]*right{}
	}
	e := r.files[ino]
	if e == nil {
		e = &right{}
		r.files[ino] = e
	}
	e.refs++
	return e
}

func (r *Rights) put(ino uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.files[ino]; e != nil {
		if e.refs--; e.refs == 0 {
			delete(r.files, ino)
		}
	}
}

// Exclusive takes the file's right exclusively and returns its release.
func (r *Rights) Exclusive(ino uint64) (release func()) {
	e := r.get(ino)
	e.rw.Lock()
	return func() { e.rw.Unlock(); r.put(ino) }
}

// Shared takes the file's right shared and returns its release.
func (r *Rights) Shared(ino uint64) (release func()) {
	e := r.get(ino)
	e.rw.RLock()
	return func() { e.rw.RUnlock(); r.put(ino) }
}
