package dmapi

import (
	"testing"
	"time"
)

// blocked reports whether fn is still blocked after a short while.
func blocked(fn func()) (done chan struct{}, isBlocked bool) {
	done = make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
		return done, false
	case <-time.After(50 * time.Millisecond):
		return done, true
	}
}

func TestRightsExclusiveWaitsForShares(t *testing.T) {
	var r Rights
	reader := r.Shared(1)
	stream := r.Share(1) // work that outlives the reader
	var releaseX func()
	done, waiting := blocked(func() { releaseX = r.Exclusive(1) })
	if !waiting {
		t.Fatal("exclusive right taken while shared")
	}
	// A new shared taker waits behind the waiting exclusive one...
	var late func()
	lateDone, lateWaiting := blocked(func() { late = r.Shared(1) })
	if !lateWaiting {
		t.Fatal("shared right granted past a waiting exclusive taker")
	}
	// ...but a holder may still hand out a share without deadlock.
	extra := r.Share(1)
	extra()
	reader()
	reader() // a second call is harmless
	select {
	case <-done:
		t.Fatal("exclusive right taken while a stream holds a share")
	case <-time.After(20 * time.Millisecond):
	}
	stream()
	<-done
	select {
	case <-lateDone:
		t.Fatal("shared right granted while exclusive is held")
	case <-time.After(20 * time.Millisecond):
	}
	releaseX()
	<-lateDone
	late()
	if len(r.files) != 0 {
		t.Fatalf("rights left behind: %d", len(r.files))
	}
	// Other files are independent.
	a := r.Exclusive(2)
	b := r.Exclusive(3)
	a()
	b()
}

func TestRightsShareNeedsHolder(t *testing.T) {
	var r Rights
	defer func() {
		if recover() == nil {
			t.Fatal("Share without a holder did not panic")
		}
	}()
	r.Share(7)
}

func TestTryExclusive(t *testing.T) {
	var r Rights
	rel, ok := r.TryExclusive(1)
	if !ok {
		t.Fatal("free right not taken")
	}
	if _, ok := r.TryExclusive(1); ok {
		t.Fatal("exclusive right taken twice")
	}
	rel()
	shared := r.Shared(1)
	if _, ok := r.TryExclusive(1); ok {
		t.Fatal("exclusive right taken while shared")
	}
	shared()
	rel, ok = r.TryExclusive(1)
	if !ok {
		t.Fatal("right not taken after its holders left")
	}
	rel()
	if len(r.files) != 0 {
		t.Fatalf("entries left behind: %d", len(r.files))
	}
}

// A shared taker that waited for an exclusive holder keeps the entry it
// waits on: dropped under it when the exclusive holder let go, its share
// was on an entry nobody saw (Share panicked, and an exclusive taker went
// through). Found by the paused-owner crash trials.
func TestSharedWaiterKeepsItsEntry(t *testing.T) {
	var r Rights
	release := r.Exclusive(7)
	got := make(chan func(), 1)
	go func() { got <- r.Shared(7) }()
	time.Sleep(50 * time.Millisecond) // the shared taker waits
	release()
	shared := <-got
	r.Share(7)() // must not panic: the shared right is there
	if _, ok := r.TryExclusive(7); ok {
		t.Fatal("an exclusive taker went through a shared holder")
	}
	shared()
	rel, ok := r.TryExclusive(7)
	if !ok {
		t.Fatal("the right stayed taken after its holder let go")
	}
	rel()
	if len(r.files) != 0 {
		t.Fatalf("entries left: %d", len(r.files))
	}
}
