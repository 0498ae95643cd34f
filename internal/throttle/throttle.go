// Package throttle caps the bytes per second of a stream of transfers (a
// node's recalls or uploads of one filesystem) and measures the rate they
// actually run at, for status.
package throttle

import (
	"context"
	"io"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Throttle is safe for concurrent use; the zero limit means no cap.
type Throttle struct {
	lim   *rate.Limiter
	turns turns // users take turns at lim (fair.go)

	mu      sync.Mutex
	limit   int64
	buckets [window / slot]int64 // bytes per slot, a ring
	at      time.Time            // start of the newest slot
	head    int
	since   time.Time // first byte counted after an idle window
}

// The measured rate is over the last window, in slots.
const (
	window = 5 * time.Second
	slot   = 500 * time.Millisecond
)

// New returns a throttle of limit bytes per second (0: none).
func New(limit int64) *Throttle {
	t := &Throttle{lim: rate.NewLimiter(rate.Inf, 0)}
	t.SetLimit(limit)
	return t
}

// SetLimit changes the cap; waiters already queued keep their turn.
func (t *Throttle) SetLimit(limit int64) {
	t.mu.Lock()
	t.limit = max(limit, 0)
	t.mu.Unlock()
	if limit <= 0 {
		t.lim.SetLimit(rate.Inf)
		return
	}
	t.lim.SetBurst(burst(limit))
	t.lim.SetLimit(rate.Limit(limit))
}

// burst lets one chunk through at once at low rates, and at most an
// eighth of a second's worth at high ones.
func burst(limit int64) int { return int(max(limit/8, 64<<10)) }

// Limit is the cap in bytes per second (0: none).
func (t *Throttle) Limit() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.limit
}

// Wait takes n bytes from the budget, waiting as long as the cap needs
// (or until ctx ends), and counts them as they are granted.
func (t *Throttle) Wait(ctx context.Context, n int) error { return t.WaitFor(ctx, 0, n) }

// WaitFor is Wait for the bytes of user key: under a cap, users take
// turns one step at a time (fair.go).
func (t *Throttle) WaitFor(ctx context.Context, key uint32, n int) error {
	for n > 0 {
		step := n
		capped := t.lim.Limit() != rate.Inf
		if b := min(t.lim.Burst(), turnStep); capped && step > b {
			step = b // short turns: another user's bytes wait for little
		}
		if capped {
			if err := t.turns.take(ctx, key); err != nil {
				return err
			}
		}
		err := t.lim.WaitN(ctx, step)
		if capped {
			t.turns.give()
		}
		if err != nil {
			return err
		}
		t.count(step)
		n -= step
	}
	return nil
}

func (t *Throttle) count(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	t.advance(now)
	if t.since.IsZero() {
		t.since = now
	}
	t.buckets[t.head] += int64(n)
}

// advance moves the ring to now, clearing the slots passed; t.mu is held.
func (t *Throttle) advance(now time.Time) {
	if t.at.IsZero() {
		t.at = now
	}
	for i := 0; now.Sub(t.at) >= slot && i < len(t.buckets); i++ {
		t.head = (t.head + 1) % len(t.buckets)
		t.buckets[t.head] = 0
		t.at = t.at.Add(slot)
	}
	if now.Sub(t.at) >= slot { // idle longer than the window
		t.at, t.since = now, time.Time{}
	}
}

// Reader paces reads from r through t (t nil: r itself).
func (t *Throttle) Reader(ctx context.Context, r io.Reader) io.Reader {
	if t == nil {
		return r
	}
	return &reader{ctx: ctx, r: r, t: t}
}

type reader struct {
	ctx context.Context
	r   io.Reader
	t   *Throttle
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.t.Wait(r.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// Rate is the bytes per second counted over the last few seconds.
func (t *Throttle) Rate() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.advance(time.Now())
	var sum int64
	for _, b := range t.buckets {
		sum += b
	}
	if sum == 0 {
		return 0
	}
	// Over the window, or over the time since the transfers began.
	span := min(window, max(time.Since(t.since), slot))
	return float64(sum) / span.Seconds()
}
