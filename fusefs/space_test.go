package fusefs

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
)

// monitorStub answers like a space monitor whose measurements the test sets.
type monitorStub struct {
	mu     sync.Mutex
	space  dmapi.Space
	freeTo int64 // an out-of-space event frees usage down to this
	events int
	refuse bool
}

func (m *monitorStub) Space(ctx context.Context, need int64) (dmapi.Space, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if need > 0 {
		m.events++
		if m.refuse {
			return m.space, dmapi.ErrNoSpace
		}
		m.space.Usage, m.space.MeasuredAt = m.freeTo, time.Now()
	}
	return m.space, nil
}

func (m *monitorStub) measure(usage int64) {
	m.mu.Lock()
	m.space.Usage, m.space.MeasuredAt = usage, time.Now()
	m.mu.Unlock()
}

func TestSpaceGuardCountsWritesSinceTheMeasurementBegan(t *testing.T) {
	ctx := context.Background()
	mon := &monitorStub{space: dmapi.Space{Quota: 100, Capacity: 100, MeasuredAt: time.Now()}, freeTo: 10}
	g := &spaceGuard{src: mon}
	mon.measure(50)
	if g.wouldPass(ctx, 40) {
		t.Fatal("50 + 40 of 100 refused")
	}
	g.grew(40)
	if !g.wouldPass(ctx, 20) {
		t.Fatal("50 + 40 written + 20 of 100 allowed")
	}
	// A measurement that began before the last refresh window ended may
	// not include those 40 bytes: they stay counted.
	mon.measure(50) // began after the window of the 40 bytes began
	g.fetched = time.Time{}
	if !g.wouldPass(ctx, 20) {
		t.Fatal("writes during the measurement were forgotten")
	}
	// A measurement begun after this window: the writes are in it.
	time.Sleep(time.Millisecond)
	g.fetched = time.Time{}
	g.refresh(ctx) // opens a new window
	time.Sleep(time.Millisecond)
	mon.measure(90)
	g.fetched = time.Time{}
	if g.wouldPass(ctx, 10) {
		t.Fatal("90 + 10 of 100 refused: the old writes are counted twice")
	}
	if !g.wouldPass(ctx, 11) {
		t.Fatal("90 + 11 of 100 allowed")
	}
	// Out of space: the event's answer is the new estimate.
	if e := g.outOfSpace(ctx, 50); e != 0 || g.wouldPass(ctx, 50) {
		t.Fatalf("after a cycle that freed to 10: errno %v, 10 + 50 refused %v", e, g.wouldPass(ctx, 50))
	}
	mon.refuse = true
	if e := g.outOfSpace(ctx, 500); e != syscall.ENOSPC {
		t.Fatalf("nothing freed: errno %v, want ENOSPC", e)
	}
	// Without a quota, writes come through the daemon once usage passes high.
	nq := &monitorStub{space: dmapi.Space{Capacity: 100, HighBytes: 80, Usage: 70, MeasuredAt: time.Now()}}
	gq := &spaceGuard{src: nq}
	if gq.countWrites(ctx) || gq.wouldPass(ctx, 1000) {
		t.Fatal("70 of 100, high 80, no quota: writes counted or refused")
	}
	gq.grew(10)
	if !gq.countWrites(ctx) {
		t.Fatal("80 of 100 with high 80: writes not counted")
	}
	var none *spaceGuard
	if none.wouldPass(ctx, 1<<40) || none.countWrites(ctx) {
		t.Fatal("a mount without a monitor refuses writes")
	}
}
