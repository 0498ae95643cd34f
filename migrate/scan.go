package migrate

import (
	"container/heap"
	"context"
	"errors"
	"io"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Scan is one walk of a backing tree.
type Scan struct {
	Files      int64         `json:"files"`       // regular files seen
	Usage      int64         `json:"usage"`       // allocated bytes of everything, as du counts them
	Instant    int64         `json:"instant"`     // allocated bytes of files with an archive copy
	Candidates []Candidate   `json:"candidates"`  // best first
	Eligible   int64         `json:"eligible"`    // files the policy would pick, before the bound
	Duration   time.Duration `json:"duration_ns"` // wall time of the walk
	Incomplete int64         `json:"incomplete"`  // entries that could not be read (vanished, no access)
	Tally      *Tally        `json:"tally,omitempty"`
}

// Tally counts a tree's files by state, as `cascadefs df` shows them. A
// file with several names counts once.
type Tally struct {
	Resident    StateCount `json:"resident"`
	Premigrated StateCount `json:"premigrated"`
	Migrated    StateCount `json:"migrated"`
	// ArchiveBytes: what the archive holds for these files' copies (the
	// data chunks; hole runs are not stored).
	ArchiveBytes int64 `json:"archive_bytes"`
	Damaged      int64 `json:"damaged"` // files whose stub record cannot be read
}

// StateCount is the files in one state: their sizes as ls shows them, and
// the space their data takes on the backing filesystem.
type StateCount struct {
	Files  int64 `json:"files"`
	Bytes  int64 `json:"bytes"`
	OnDisk int64 `json:"on_disk"`
}

func (t *Tally) add(o *Tally) {
	for _, p := range [][2]*StateCount{{&t.Resident, &o.Resident}, {&t.Premigrated, &o.Premigrated}, {&t.Migrated, &o.Migrated}} {
		p[0].Files += p[1].Files
		p[0].Bytes += p[1].Bytes
		p[0].OnDisk += p[1].OnDisk
	}
	t.ArchiveBytes += o.ArchiveBytes
	t.Damaged += o.Damaged
}

// count files one file, with its record (nil: none) as read.
func (t *Tally) count(st *unix.Stat_t, rec *stub.Record) {
	c := &t.Resident
	switch {
	case rec == nil:
	case rec.State == stub.Migrated:
		c = &t.Migrated
	case rec.Unchanged(st): // a premigrated file changed since is resident
		c = &t.Premigrated
	}
	c.Files++
	c.Bytes += st.Size
	c.OnDisk += st.Blocks * 512
	if c != &t.Resident {
		t.ArchiveBytes += rec.PackedSize()
	}
}

// ScanOptions bound a scan's candidate list.
type ScanOptions struct {
	// Want: keep the best candidates whose releases free at least this
	// much (0: only Keep of them).
	Want int64
	// Keep at least this many candidates, if there are that many.
	Keep int
	// NoRecords skips reading stub records: usage only, no candidates.
	NoRecords bool
	// Tally reads every file's record and counts files by state.
	Tally bool
}

// scanWorkers walk directories side by side: a cold walk waits on the
// disk for each inode, and a warm one is two system calls per file.
const scanWorkers = 4

// Scan walks the backing tree at root: usage, and the best candidates by
// the policy. It holds at most what opt asks for (bounded by
// MaxCandidates), plus the names of the directories being read, so a tree
// of millions of files scans in little memory.
func (p *Policy) Scan(ctx context.Context, root *beneath.Root, opt ScanOptions, now time.Time) (*Scan, error) {
	start := time.Now()
	limit := p.MaxCandidates
	if limit <= 0 {
		limit = DefaultPolicy().MaxCandidates
	}
	q := &dirQueue{}
	q.cond = sync.NewCond(&q.mu)
	q.push(dirJob{rel: "."})
	best := &bestCandidates{want: opt.Want, keep: opt.Keep, limit: limit}
	links := &seenLinks{inodes: map[uint64]bool{}}
	parts := make([]*scanPart, scanWorkers)
	var wg sync.WaitGroup
	for w := range parts {
		parts[w] = &scanPart{p: p, root: root, opt: opt, now: now, ctx: ctx, best: best, links: links}
		if opt.Tally {
			parts[w].Tally = &Tally{}
		}
		wg.Add(1)
		go func(part *scanPart) {
			defer wg.Done()
			for job, ok := q.pop(); ok; job, ok = q.pop() {
				if ctx.Err() == nil {
					part.readDir(job, q)
				}
				q.done()
			}
		}(parts[w])
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &Scan{}
	if opt.Tally {
		s.Tally = &Tally{}
	}
	for _, part := range parts {
		if opt.Tally {
			s.Tally.add(part.Tally)
		}
		s.Files += part.Files
		s.Usage += part.Usage
		s.Instant += part.Instant
		s.Eligible += part.Eligible
		s.Incomplete += part.Incomplete
	}
	s.Candidates = make([]Candidate, len(best.heap))
	copy(s.Candidates, best.heap)
	sort.Slice(s.Candidates, func(i, j int) bool { return before(&s.Candidates[i], &s.Candidates[j]) })
	s.Duration = time.Since(start)
	return s, nil
}

// dirJob is a directory to read; under an excluded one only usage counts.
type dirJob struct {
	rel      string
	excluded bool
}

// dirQueue hands directories to the workers until none is left and none
// is being read (a directory being read may add more).
type dirQueue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	jobs    []dirJob
	pending int // queued or being read
}

func (q *dirQueue) push(j dirJob) {
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	q.pending++
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *dirQueue) pop() (dirJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.jobs) == 0 && q.pending > 0 {
		q.cond.Wait()
	}
	if len(q.jobs) == 0 {
		return dirJob{}, false
	}
	j := q.jobs[len(q.jobs)-1] // depth first: the stack stays short
	q.jobs = q.jobs[:len(q.jobs)-1]
	return j, true
}

func (q *dirQueue) done() {
	q.mu.Lock()
	q.pending--
	last := q.pending == 0
	q.mu.Unlock()
	if last {
		q.cond.Broadcast()
	}
}

// scanPart is one worker's share of a scan (its counters; the candidates
// are shared).
type scanPart struct {
	Scan
	p     *Policy
	root  *beneath.Root
	opt   ScanOptions
	now   time.Time
	ctx   context.Context
	best  *bestCandidates
	links *seenLinks
}

// seenLinks remembers the inodes with several names that a tally counted.
type seenLinks struct {
	mu     sync.Mutex
	inodes map[uint64]bool
}

// first reports whether this is the first name of the inode seen.
func (l *seenLinks) first(ino uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inodes[ino] {
		return false
	}
	l.inodes[ino] = true
	return true
}

// bestCandidates keeps the best candidates that free want (at least keep,
// at most limit); heap[0] is the worst kept, dropped while the rest still
// free enough.
type bestCandidates struct {
	mu          sync.Mutex
	heap        candidateHeap
	frees, want int64
	keep, limit int
}

func (b *bestCandidates) consider(c Candidate) {
	b.mu.Lock()
	defer b.mu.Unlock()
	heap.Push(&b.heap, c)
	b.frees += c.frees()
	for b.heap.Len() > b.keep && (b.heap.Len() > b.limit || b.frees-b.heap[0].frees() >= b.want) {
		b.frees -= heap.Pop(&b.heap).(Candidate).frees()
	}
}

func (s *scanPart) readDir(job dirJob, q *dirQueue) {
	// Opened beneath the root without following symlinks: a directory
	// swapped for a symlink since its parent was read is not entered.
	d, err := s.root.OpenDir(job.rel)
	if err != nil {
		s.Incomplete++
		return
	}
	defer d.Close()
	dfd := int(d.Fd())
	for s.ctx.Err() == nil {
		ents, err := d.ReadDir(1024)
		for _, e := range ents {
			s.entry(dfd, job, e.Name(), q)
		}
		if errors.Is(err, io.EOF) || (err == nil && len(ents) == 0) {
			return
		}
		if err != nil {
			s.Incomplete++
			return
		}
	}
}

func (s *scanPart) entry(dfd int, job dirJob, name string, q *dirQueue) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		s.Incomplete++ // vanished meanwhile, or no access
		return
	}
	s.Usage += st.Blocks * 512
	rel := path.Join(job.rel, name)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		// An excluded directory still counts in usage, never for candidates.
		q.push(dirJob{rel: rel, excluded: job.excluded || s.p.Excluded(rel) != ""})
	case unix.S_IFREG:
		s.Files++
		var rec *stub.Record
		if s.opt.Tally && (st.Nlink < 2 || s.links.first(st.Ino)) {
			var err error
			if rec, err = stub.ReadRecordIn(dfd, name); err != nil {
				s.Tally.Damaged++
			} else {
				s.Tally.count(&st, rec)
			}
		}
		if s.opt.NoRecords || job.excluded || st.Blocks == 0 {
			return
		}
		if rec == nil {
			var err error
			if rec, err = stub.ReadRecordIn(dfd, name); err != nil {
				s.Incomplete++ // a corrupt record: never touched by the monitor
				return
			}
		}
		v := s.p.judge(rel, &st, rec, s.now)
		v.Ino = st.Ino
		if v.Instant {
			s.Instant += v.Alloc
		}
		if v.Skip == "" {
			s.Eligible++
			s.best.consider(v.Candidate)
		}
	}
}

// candidateHeap keeps the worst kept candidate on top, to be dropped first.
type candidateHeap []Candidate

func (h candidateHeap) Len() int           { return len(h) }
func (h candidateHeap) Less(i, j int) bool { return before(&h[j], &h[i]) }
func (h candidateHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *candidateHeap) Push(x any)        { *h = append(*h, x.(Candidate)) }
func (h *candidateHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}
