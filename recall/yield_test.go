package recall

import (
	"context"
	"testing"
	"time"
)

// Bulk streams yield while a reader's recall runs; background uploads
// while any recall runs; both at most maxYield, and not at all when idle.
func TestYieldWhileRecallsRun(t *testing.T) {
	m := &Manager{}
	took := func(f func(context.Context)) time.Duration {
		start := time.Now()
		f(context.Background())
		return time.Since(start)
	}
	if d := took(m.yieldToReaders) + took(m.YieldToRecalls); d > 20*time.Millisecond {
		t.Fatalf("idle, yet yielding took %v", d)
	}
	admin := m.waits(false, 0)
	if d := took(m.yieldToReaders); d > 20*time.Millisecond {
		t.Fatalf("an admin recall made bulk streams wait %v", d)
	}
	if d := took(m.YieldToRecalls); d < maxYield/2 {
		t.Fatalf("an admin recall held a background upload back only %v", d)
	}
	reader := m.waits(true, 0)
	go func() { time.Sleep(50 * time.Millisecond); reader() }()
	if d := took(m.yieldToReaders); d < 40*time.Millisecond || d > maxYield {
		t.Fatalf("bulk yielded %v to a reader that ended after 50 ms", d)
	}
	admin()
	if d := took(m.YieldToRecalls); d > 20*time.Millisecond {
		t.Fatalf("all recalls ended, yet an upload waited %v", d)
	}
}

// A user's reader streams hold back while a reader of a user with fewer
// readers waiting waits (issue 20, item 7), and not otherwise.
func TestStreamsYieldToLighterUsers(t *testing.T) {
	m := &Manager{}
	var heavy []func()
	for range 3 {
		heavy = append(heavy, m.waits(true, 1000))
	}
	start := time.Now()
	m.yieldToLighter(context.Background(), 1000)
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Fatalf("alone, user 1000's streams waited %v", d)
	}
	light := m.waits(true, 2000)
	if !m.lighterWaiting(1000) || m.lighterWaiting(2000) {
		t.Fatal("user 2000 (one reader) is the lighter of the two")
	}
	go func() { time.Sleep(50 * time.Millisecond); light() }()
	start = time.Now()
	m.yieldToLighter(context.Background(), 1000)
	if d := time.Since(start); d < 40*time.Millisecond || d > maxYield+50*time.Millisecond {
		t.Fatalf("user 1000 held back %v for a lighter reader that ended after 50 ms", d)
	}
	for _, done := range heavy {
		done()
	}
}

// GET stream slots: max at once, and one more that only a user holding
// none may take; a prefetch never takes it (issue 20, item 7).
func TestStreamSlotsKeepOneForAnotherUser(t *testing.T) {
	s := newSlots(2)
	ctx := context.Background()
	for range 2 {
		if err := s.take(ctx, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if s.try(2000) {
		t.Fatal("a prefetch took the slot past max")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := s.take(short, 1000); err == nil {
		t.Fatal("a user holding slots took the spare one")
	}
	if err := s.take(ctx, 2000); err != nil {
		t.Fatalf("another user could not take the spare slot: %v", err)
	}
	// A third user waits: that is contention (streams reading ahead for
	// nobody give their slot up), and a slot given back serves it.
	waiting := make(chan error, 1)
	go func() { waiting <- s.take(ctx, 3000) }()
	deadline := time.Now().Add(2 * time.Second)
	for !s.contended() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !s.contended() {
		t.Fatal("a blocked take is not seen as contention")
	}
	s.put(1000)
	if err := <-waiting; err != nil {
		t.Fatal(err)
	}
}
