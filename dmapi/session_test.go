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
	s := NewSession("fs", Config{Workers: 4}, func(ctx context.Context, ev *Event) error {
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
	s := NewSession("fs", Config{Workers: 3}, func(ctx context.Context, ev *Event) error {
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
	s := NewSession("fs", Config{Workers: 1}, func(ctx context.Context, ev *Event) error {
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
	s := NewSession("fs", Config{Workers: 1}, func(ctx context.Context, ev *Event) error {
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
