package dmapi

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDedupeSharesOneCall(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	s := NewSession("fs", Config{Workers: 4, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		calls.Add(1)
		<-release
		return nil
	}, nil)
	defer s.Close()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Raise(context.Background(), &Event{Type: Read, Ino: 7, Offset: 0, Length: 4096}); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, func() bool { p := s.Pending(); return len(p) == 1 && p[0].Waiters == 10 })
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times for one region, want 1", n)
	}
	// A different region of the same file is different work.
	s.Raise(context.Background(), &Event{Type: Read, Ino: 7, Offset: 4096, Length: 4096})
	if n := calls.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

func TestAdmissionBoundsConcurrency(t *testing.T) {
	var running, peak atomic.Int32
	s := NewSession("fs", Config{Workers: 3, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		running.Add(-1)
		return nil
	}, nil)
	defer s.Close()
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Raise(context.Background(), &Event{Type: Read, Ino: uint64(i), Length: 1})
		}()
	}
	wg.Wait()
	if p := peak.Load(); p != 3 {
		t.Fatalf("peak concurrency %d, want 3", p)
	}
}

func TestInterruptedWaiterDoesNotCancelWork(t *testing.T) {
	release := make(chan struct{})
	var finished atomic.Bool
	s := NewSession("fs", Config{Workers: 1, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		finished.Store(true)
		return nil
	}, nil)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Raise(ctx, &Event{Type: Read, Ino: 1, Length: 10}) }()
	waitFor(t, func() bool { return len(s.Pending()) == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted waiter got %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Raise(context.Background(), &Event{Type: Read, Ino: 1, Length: 10}) }()
	waitFor(t, func() bool { p := s.Pending(); return len(p) == 1 && p[0].Waiters == 2 })
	close(release)
	if err := <-done; err != nil || !finished.Load() {
		t.Fatalf("shared work did not complete: %v", err)
	}
}

func TestTimeoutAndErrors(t *testing.T) {
	boom := errors.New("boom")
	s := NewSession("fs", Config{Workers: 1, Timeout: 50 * time.Millisecond}, func(ctx context.Context, ev *Event) error {
		if ev.Ino == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return boom
	}, nil)
	if err := s.Raise(context.Background(), &Event{Type: Read, Ino: 2, Length: 1}); !errors.Is(err, boom) {
		t.Fatalf("handler error not returned: %v", err)
	}
	if err := s.Raise(context.Background(), &Event{Type: Read, Ino: 1, Length: 1}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("want timeout, got %v", err)
	}
	// Queued behind the stuck event; Close answers it.
	errc := make(chan error, 1)
	go func() { errc <- s.Raise(context.Background(), &Event{Type: Read, Ino: 3, Length: 1}) }()
	waitFor(t, func() bool { return len(s.Pending()) == 2 })
	s.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("queued event at close: %v", err)
	}
	if err := s.Raise(context.Background(), &Event{Type: Read, Ino: 4, Length: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("raise after close: %v", err)
	}
}

func TestRightsExclusive(t *testing.T) {
	var r Rights
	rel := r.Exclusive(5)
	got := make(chan struct{})
	go func() { r.Shared(5)(); close(got) }()
	select {
	case <-got:
		t.Fatal("shared right granted while exclusive held")
	case <-time.After(30 * time.Millisecond):
	}
	r.Shared(6)() // other files are independent
	rel()
	<-got
	if len(r.files) != 0 {
		t.Fatalf("rights leaked: %d", len(r.files))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSessionStuck(t *testing.T) {
	release := make(chan struct{})
	s := NewSession("fs", Config{Workers: 1, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, nil)
	defer s.Close()
	if s.Stuck(10 * time.Millisecond) {
		t.Fatal("an idle session is stuck")
	}
	go s.Raise(context.Background(), &Event{Type: Read, Ino: 1, Length: -1})
	time.Sleep(50 * time.Millisecond)
	if !s.Stuck(10 * time.Millisecond) {
		t.Fatal("a session whose only worker hangs is not stuck")
	}
	if s.Stuck(time.Hour) {
		t.Fatal("stuck before the limit")
	}
	close(release)
	time.Sleep(20 * time.Millisecond)
	if s.Stuck(10 * time.Millisecond) {
		t.Fatal("stuck after its work finished")
	}
}

// Readers go first, and a bulk recall never takes the workers kept for
// them: with 4 workers (1 kept), 10 admin recalls run 3 at a time, a
// reader's event runs at once, and a reader queued behind admin events
// is taken before them.
func TestReadersGoFirst(t *testing.T) {
	gates := map[uint64]chan struct{}{}
	var mu sync.Mutex
	gate := func(ino uint64) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if gates[ino] == nil {
			gates[ino] = make(chan struct{})
		}
		return gates[ino]
	}
	var order []uint64
	s := NewSession("fs", Config{Workers: 4, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		mu.Lock()
		order = append(order, ev.Ino)
		mu.Unlock()
		select {
		case <-gate(ev.Ino):
		case <-ctx.Done():
		}
		return nil
	}, nil)
	defer s.Close()
	running := func() (bulk, readers int) {
		for _, p := range s.Pending() {
			if p.Running && p.Priority == PriorityAdmin {
				bulk++
			} else if p.Running {
				readers++
			}
		}
		return
	}
	for i := range 10 {
		s.Post(&Event{Type: Read, Ino: uint64(100 + i), Length: -1, Priority: PriorityAdmin})
	}
	waitFor(t, func() bool { b, _ := running(); return b == 3 })
	time.Sleep(50 * time.Millisecond)
	if b, _ := running(); b != 3 {
		t.Fatalf("%d admin events run with 4 workers, want 3 (one kept for readers)", b)
	}
	done := make(chan error)
	go func() { done <- s.Raise(context.Background(), &Event{Type: Read, Ino: 1, Length: 4096}) }()
	waitFor(t, func() bool { _, r := running(); return r == 1 })
	close(gate(1))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Every worker busy: 3 admin events and a second reader; a third
	// reader queued after the other admin events goes next.
	go s.Raise(context.Background(), &Event{Type: Read, Ino: 2, Length: 4096})
	waitFor(t, func() bool { _, r := running(); return r == 1 })
	go s.Raise(context.Background(), &Event{Type: Read, Ino: 3, Length: 4096})
	waitFor(t, func() bool { return len(s.Pending()) == 12 }) // 10 admin + readers 2 and 3
	mu.Lock()
	taken := len(order)
	mu.Unlock()
	close(gate(2))
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == taken+1 })
	mu.Lock()
	last := order[taken]
	mu.Unlock()
	if last != 3 {
		t.Fatalf("took %d after the reader ended, want reader 3 before the queued admin events", last)
	}
	close(gate(3))
	for i := range 10 {
		close(gate(uint64(100 + i)))
	}
	waitFor(t, func() bool { return len(s.Pending()) == 0 })
}

// A cancelled event answers its waiters at once with ErrCanceled, queued
// or running; a running handler sees its context end; the next event for
// the same work starts afresh.
func TestCancelAnswersWaitersAtOnce(t *testing.T) {
	ended := make(chan uint64, 4)
	s := NewSession("fs", Config{Workers: 1, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		if ev.Ino == 9 {
			return nil
		}
		<-ctx.Done()
		ended <- ev.Ino
		return ctx.Err()
	}, nil)
	defer s.Close()
	errs := make(chan error, 2)
	go func() { errs <- s.Raise(context.Background(), &Event{Type: Read, Ino: 1, Length: -1}) }()
	waitFor(t, func() bool { p := s.Pending(); return len(p) == 1 && p[0].Running })
	go func() { errs <- s.Raise(context.Background(), &Event{Type: Read, Ino: 2, Length: -1}) }() // queued: one worker
	waitFor(t, func() bool { return len(s.Pending()) == 2 })

	if got := s.Cancel(func(ev *Event) bool { return ev.Ino == 2 }); len(got) != 1 || got[0].Ino != 2 {
		t.Fatalf("cancelled %+v, want the event of inode 2", got)
	}
	if err := <-errs; !errors.Is(err, ErrCanceled) {
		t.Fatalf("queued waiter got %v, want ErrCanceled", err)
	}
	start := time.Now()
	s.Cancel(func(ev *Event) bool { return true })
	if err := <-errs; !errors.Is(err, ErrCanceled) {
		t.Fatalf("running waiter got %v, want ErrCanceled", err)
	}
	if ino := <-ended; ino != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("handler of %d ended after %v", ino, time.Since(start))
	}
	if len(s.Pending()) != 0 {
		t.Fatalf("pending after cancel: %+v", s.Pending())
	}
	if err := s.Raise(context.Background(), &Event{Type: Read, Ino: 9, Length: -1}); err != nil {
		t.Fatalf("an event after the cancel: %v", err)
	}
}

// Workers are shared fairly between users (issue 20, item 7): one user's
// many reads, which hold every worker, never make another user's first
// read wait for them; and each user's readers go in turn.
func TestOneUserCannotStarveAnother(t *testing.T) {
	block := make(chan struct{})
	s := NewSession("fs", Config{Workers: 4, Timeout: time.Minute}, func(ctx context.Context, ev *Event) error {
		if ev.UID == 1000 {
			select {
			case <-block:
			case <-ctx.Done():
			}
		}
		return nil
	}, nil)
	defer s.Close()
	defer close(block)
	for i := range 16 {
		s.Post(&Event{Type: Read, Ino: uint64(100 + i), Length: -1, UID: 1000})
	}
	waitFor(t, func() bool {
		n := 0
		for _, p := range s.Pending() {
			if p.Running {
				n++
			}
		}
		return n == 4
	})
	done := make(chan error, 1)
	go func() { done <- s.Raise(context.Background(), &Event{Type: Read, Ino: 1, Length: 4096, UID: 2000}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("another user's read waited behind one user's sixteen")
	}
	// The first user still has only its four workers.
	n := 0
	for _, p := range s.Pending() {
		if p.Running {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d of one user's events run with 4 workers", n)
	}
}
