package fusefs

import (
	"math"
	"sync"
)

// residentSpans is what a shielded handle knows holds data: sorted,
// merged byte ranges. A sequential reader keeps one span growing; a
// random one many, and past maxSpans the handle forgets and asks again.
type residentSpans struct {
	mu    sync.Mutex
	spans [][2]int64 // [start, end)
}

const maxSpans = 64

func (r *residentSpans) covers(start, end int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if s[0] <= start && end <= s[1] {
			return true
		}
	}
	return false
}

// all marks the whole file: it has no stub record, or a premigrated one.
func (r *residentSpans) all() {
	r.mu.Lock()
	r.spans = [][2]int64{{0, math.MaxInt64}}
	r.mu.Unlock()
}

func (r *residentSpans) add(start, end int64) {
	if start >= end {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][2]int64
	placed := false
	for _, s := range r.spans {
		switch {
		case s[1] < start: // before, apart
			out = append(out, s)
		case end < s[0]: // after, apart
			if !placed {
				out = append(out, [2]int64{start, end})
				placed = true
			}
			out = append(out, s)
		default: // touching or overlapping: merge
			start, end = min(start, s[0]), max(end, s[1])
		}
	}
	if !placed {
		out = append(out, [2]int64{start, end})
	}
	if len(out) > maxSpans {
		out = [][2]int64{{start, end}}
	}
	r.spans = out
}
