package fusefs

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"golang.org/x/sys/unix"
)

// Space is how the FUSE layer reaches the space monitor of its filesystem.
type Space interface {
	// Space returns the monitor's last measurement when need is 0; else it
	// raises an out-of-space event for need more bytes and waits for the
	// answer (dmapi.ErrNoSpace when the monitor could not free enough).
	Space(ctx context.Context, need int64) (dmapi.Space, error)
}

// spaceRefresh: how often a mount asks the monitor for its measurement.
const spaceRefresh = time.Second

// spaceGuard keeps writes through this mount within the filesystem's quota.
// Its estimate is the monitor's last measurement plus what this mount's
// writes added since that measurement began (counted per refresh window,
// so a write during a walk is counted even if the walk saw it too: the
// estimate errs high). Writes through other nodes between two
// measurements are not in it, so across nodes the quota is soft by up to
// what they write in one monitor interval.
type spaceGuard struct {
	src  Space
	root string // the backing directory: statfs when there is no quota

	mu      sync.Mutex
	known   dmapi.Space
	windows []growth  // this mount's growth per refresh window, oldest first
	fetched time.Time // when known was last asked for
}

// growth is what this mount added from start until the next window's start.
type growth struct {
	start time.Time
	bytes int64
}

// maxWindows bounds the growth history (a minute of refreshes and more).
const maxWindows = 128

// refresh asks for the monitor's measurement at most every spaceRefresh,
// or until there is one (a monitor measures first right after it starts).
func (g *spaceGuard) refresh(ctx context.Context) {
	g.mu.Lock()
	stale := time.Since(g.fetched) >= spaceRefresh || g.known.MeasuredAt.IsZero()
	if stale {
		g.fetched = time.Now() // one asker at a time; the others use known
		g.windows = append(g.windows, growth{start: g.fetched})
		if len(g.windows) > maxWindows {
			g.windows = g.windows[1:]
		}
	}
	g.mu.Unlock()
	if !stale {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	sp, err := g.src.Space(ctx, 0)
	if err != nil {
		return // keep the last estimate; the monitor may be moving
	}
	g.learn(sp)
}

func (g *spaceGuard) learn(sp dmapi.Space) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if sp.MeasuredAt.After(g.known.MeasuredAt) {
		g.known = sp
		// Windows that ended before the measurement began are in it.
		for len(g.windows) > 1 && !g.windows[1].start.After(sp.MeasuredAt) {
			g.windows = g.windows[1:]
		}
	}
}

// grown is what this mount added since the known measurement began.
func (g *spaceGuard) grown() int64 {
	var n int64
	for _, w := range g.windows {
		n += w.bytes
	}
	return n
}

// countWrites reports whether writes must come through the daemon rather
// than kernel passthrough: under a quota (to keep it), and past the high
// threshold (where ENOSPC is near, and a write that hits it can wait for
// the monitor instead of failing).
func (g *spaceGuard) countWrites(ctx context.Context) bool {
	if g == nil {
		return false
	}
	g.refresh(ctx)
	g.mu.Lock()
	known, grown := g.known, g.grown()
	g.mu.Unlock()
	if known.Quota > 0 || known.MeasuredAt.IsZero() {
		return true // a quota to keep, or not known yet whether there is one
	}
	if known.HighBytes <= 0 {
		return false
	}
	// Without a quota usage is the backing filesystem's: ask it now, as
	// passthrough writes since the last measurement went uncounted.
	var st unix.Statfs_t
	if g.root == "" || unix.Statfs(g.root, &st) != nil {
		return known.Usage+grown >= known.HighBytes
	}
	return int64(st.Blocks-st.Bfree)*st.Frsize >= known.HighBytes
}

// mayHaveQuota reports a quota, or that none is known yet (no refresh:
// it is asked on every write).
func (g *spaceGuard) mayHaveQuota() bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.known.Quota > 0 || g.known.MeasuredAt.IsZero()
}

// wouldPass reports whether growing by n bytes would pass the quota.
func (g *spaceGuard) wouldPass(ctx context.Context, n int64) bool {
	if g == nil || n <= 0 {
		return false
	}
	g.refresh(ctx)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.known.Quota > 0 && g.known.Usage+g.grown()+n > g.known.Quota
}

func (g *spaceGuard) grew(n int64) {
	if g != nil && n > 0 {
		g.mu.Lock()
		if len(g.windows) == 0 {
			g.windows = append(g.windows, growth{start: time.Now()})
		}
		g.windows[len(g.windows)-1].bytes += n
		g.mu.Unlock()
	}
}

// outOfSpace raises an out-of-space event for need bytes and waits for
// the monitor's cycle: 0 means try the write again.
func (g *spaceGuard) outOfSpace(ctx context.Context, need int64) syscall.Errno {
	sp, err := g.src.Space(ctx, need)
	switch {
	case err == nil:
		// Measured after the request: it holds what this mount wrote before.
		g.mu.Lock()
		g.known, g.fetched = sp, time.Now()
		g.windows = []growth{{start: g.fetched}}
		g.mu.Unlock()
		return 0
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	default:
		return syscall.ENOSPC
	}
}
