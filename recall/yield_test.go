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
	admin := m.waits(false)
	if d := took(m.yieldToReaders); d > 20*time.Millisecond {
		t.Fatalf("an admin recall made bulk streams wait %v", d)
	}
	if d := took(m.YieldToRecalls); d < maxYield/2 {
		t.Fatalf("an admin recall held a background upload back only %v", d)
	}
	reader := m.waits(true)
	go func() { time.Sleep(50 * time.Millisecond); reader() }()
	if d := took(m.yieldToReaders); d < 40*time.Millisecond || d > maxYield {
		t.Fatalf("bulk yielded %v to a reader that ended after 50 ms", d)
	}
	admin()
	if d := took(m.YieldToRecalls); d > 20*time.Millisecond {
		t.Fatalf("all recalls ended, yet an upload waited %v", d)
	}
}
