package throttle

import (
	"context"
	"sync"
)

// Under a cap, the bytes are shared fairly between users: callers take
// turns at the limiter one step (at most a burst) at a time, and the turn
// goes to the waiting user served longest ago, so one user's many
// streams cannot make another's first bytes wait behind all of theirs.

// turnStep is the most bytes one turn takes.
const turnStep = 64 << 10

// turns hands the limiter to one caller at a time.
type turns struct {
	mu      sync.Mutex
	busy    bool
	seq     uint64
	served  map[uint32]uint64 // user -> seq of its last turn
	waiting []*turnWaiter     // in arrival order
}

type turnWaiter struct {
	key   uint32
	ready chan struct{}
}

// take waits for the caller's turn (user key).
func (t *turns) take(ctx context.Context, key uint32) error {
	t.mu.Lock()
	if t.served == nil {
		t.served = map[uint32]uint64{}
	}
	if !t.busy {
		t.busy = true
		t.grant(key)
		t.mu.Unlock()
		return nil
	}
	w := &turnWaiter{key: key, ready: make(chan struct{})}
	t.waiting = append(t.waiting, w)
	t.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		t.mu.Lock()
		for i, x := range t.waiting {
			if x == w {
				t.waiting = append(t.waiting[:i], t.waiting[i+1:]...)
				t.mu.Unlock()
				return ctx.Err()
			}
		}
		t.mu.Unlock()
		t.give() // handed the turn meanwhile: pass it on
		return ctx.Err()
	}
}

// give ends the caller's turn and hands it to the waiter whose user was
// served longest ago (the first come among equals).
func (t *turns) give() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.waiting) == 0 {
		t.busy = false
		return
	}
	best := 0
	for i, w := range t.waiting {
		if t.served[w.key] < t.served[t.waiting[best].key] {
			best = i
		}
	}
	w := t.waiting[best]
	t.waiting = append(t.waiting[:best], t.waiting[best+1:]...)
	t.grant(w.key)
	close(w.ready)
}

// grant notes a turn of key; t.mu is held.
func (t *turns) grant(key uint32) {
	t.seq++
	t.served[key] = t.seq
	if len(t.served) > 4096 { // users long gone: forget them all but the waiting
		keep := map[uint32]uint64{key: t.seq}
		for _, w := range t.waiting {
			keep[w.key] = t.served[w.key]
		}
		t.served = keep
	}
}
