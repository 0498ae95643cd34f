package throttle

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The cap holds across concurrent takers, including takes larger than
// the burst; and the measured rate is what went through.
func TestThrottleCapsAndMeasures(t *testing.T) {
	const limit = 2 << 20 // 2 MiB/s
	th := New(limit)
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				if err := th.Wait(context.Background(), 256<<10); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	// 4 MiB at 2 MiB/s with a quarter-MiB burst: at least 1.8 s.
	if d := time.Since(start); d < 1800*time.Millisecond {
		t.Fatalf("4 MiB went through a 2 MiB/s throttle in %v", d)
	}
	if r := th.Rate(); r < 0.5*limit || r > 1.5*limit {
		t.Fatalf("measured %.0f B/s through a %d B/s cap", r, limit)
	}
}

func TestThrottleUnlimitedAndChanged(t *testing.T) {
	th := New(0)
	start := time.Now()
	if err := th.Wait(context.Background(), 1<<30); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("no cap, yet a GiB waited %v", d)
	}
	th.SetLimit(1 << 20)
	if th.Limit() != 1<<20 {
		t.Fatalf("limit %d", th.Limit())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := th.Wait(ctx, 4<<20); err == nil {
		t.Fatal("4 MiB through 1 MiB/s within 200 ms")
	}
	th.SetLimit(0)
	if err := th.Wait(context.Background(), 1<<30); err != nil {
		t.Fatal(err)
	}
}

// Under a cap, users take turns (issue 20, item 7): a user arriving while
// another's eight streams wait for the limiter gets its bytes after at
// most a turn or two of theirs, not after all of their queued bytes.
func TestUsersTakeTurns(t *testing.T) {
	th := New(640 << 10) // turns of 64 KiB: 10 a second
	step := turnStep
	var aSteps atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 8 {
		go func() {
			for ctx.Err() == nil {
				if th.WaitFor(ctx, 1, step) == nil {
					aSteps.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // user 1's streams queue up
	before := aSteps.Load()
	if err := th.WaitFor(context.Background(), 2, step); err != nil {
		t.Fatal(err)
	}
	if got := aSteps.Load() - before; got > 2 {
		t.Fatalf("user 2 waited for %d steps of user 1, want at most 2", got)
	}
}
