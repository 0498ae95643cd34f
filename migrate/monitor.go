package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"golang.org/x/sys/unix"
)

// Monitor is the space monitor (the patent's dsmmonitord) of one
// filesystem, run by the owner of its DM session: it measures usage every
// interval and, past the high threshold or on an out-of-space event,
// migrates the policy's candidates until usage is under the low threshold,
// then premigrates more for the next cycle.
type Monitor struct {
	root *beneath.Root
	mig  migrater
	log  *slog.Logger
	// Cycled, if set, is told of every cycle.
	Cycled func(Cycle)

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}

	mu       sync.Mutex
	busy     bool      // a check is running
	progress time.Time // when the running check began or last finished a file
	policy   Policy    // read through current(): SetPolicy changes it
	space    dmapi.Space
	need     int64           // largest out-of-space request since the last check
	waiters  []chan struct{} // out-of-space requests waiting for the next check
	status   SpaceStatus
	grown    int64     // bytes recalls added since the last measurement
	grewKick time.Time // when Grew last woke the monitor
}

// grewKickEvery bounds how often recalls wake the monitor (under a quota
// each check walks the tree).
const grewKickEvery = 2 * time.Second

// Grew tells the monitor that recalls added n bytes it has not measured.
// Once its estimate passes the high threshold it checks at once, rather
// than at its next interval: reading migrated files back could otherwise
// take the filesystem far past its quota for a whole interval.
func (m *Monitor) Grew(n int64) {
	m.mu.Lock()
	m.grown += n
	over := m.space.HighBytes > 0 && m.space.Usage+m.grown > m.space.HighBytes && time.Since(m.grewKick) >= grewKickEvery
	if over {
		m.grewKick = time.Now()
	}
	m.mu.Unlock()
	if over {
		m.wake()
	}
}

// migrater is what the monitor needs of a Migrator.
type migrater interface {
	MigrateIdle(ctx context.Context, rel string, ino uint64, premigrateOnly bool) (Result, error)
}

// SpaceStatus is what `cascadefs status` shows of a monitor.
type SpaceStatus struct {
	dmapi.Space
	High       int         `json:"high"`
	Low        int         `json:"low"`
	Premigrate int         `json:"premigrate"`
	Interval   string      `json:"interval"`
	LastCycle  *Cycle      `json:"last_cycle,omitempty"`
	Cycles     int         `json:"cycles"`
	Next       []Candidate `json:"next"` // best candidates of the last scan
	ScannedAt  time.Time   `json:"scanned_at"`
	Error      string      `json:"error,omitempty"` // of the last check
}

// Cycle is one migration cycle.
type Cycle struct {
	Reason        string        `json:"reason"`
	Start         time.Time     `json:"start"`
	Duration      time.Duration `json:"duration_ns"`
	UsageBefore   int64         `json:"usage_before"`
	UsageAfter    int64         `json:"usage_after"`
	Files         int           `json:"files"`    // released (migrated)
	Bytes         int64         `json:"bytes"`    // released
	Uploaded      int64         `json:"uploaded"` // bytes sent to the archive
	Premigrated   int           `json:"premigrated"`
	PremigratedB  int64         `json:"premigrated_bytes"`
	Failed        int           `json:"failed"`
	Busy          int           `json:"busy"`              // open somewhere: left for the next cycle
	Stopped       bool          `json:"stopped,omitempty"` // by shutdown or failover
	ScanDuration  time.Duration `json:"scan_ns"`
	ScannedFiles  int64         `json:"scanned_files"`
	Unfreeable    bool          `json:"unfreeable,omitempty"` // ran out of candidates above low
	Blocked       string        `json:"blocked,omitempty"`    // why no release could happen (a node is down)
	FirstFailures []string      `json:"first_failures,omitempty"`
	// waited: a writer or a recall is waiting for the space this cycle
	// frees; its uploads do not hold back for recalls (one may be it).
	waited bool
}

// waitedKey marks the context of a cycle somebody waits for.
type waitedKey struct{}

// statusCandidates is how many next candidates status shows.
const statusCandidates = 10

// NewMonitor returns a monitor of the backing tree at root; Start runs it.
func NewMonitor(root *beneath.Root, policy Policy, mig migrater, log *slog.Logger) *Monitor {
	m := &Monitor{root: root, mig: mig, log: log, kick: make(chan struct{}, 1), done: make(chan struct{})}
	m.setPolicy(policy)
	return m
}

// SetPolicy changes the policy (after `cascadefs fs set`); the next check
// runs at once with it.
func (m *Monitor) SetPolicy(p Policy) {
	m.mu.Lock()
	same := reflect.DeepEqual(withDefaults(p), m.policy)
	m.mu.Unlock()
	if !same {
		m.setPolicy(p)
		m.wake()
	}
}

func (m *Monitor) setPolicy(p Policy) {
	p = withDefaults(p)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policy = p
	m.status.High, m.status.Low, m.status.Premigrate, m.status.Interval = p.High, p.Low, p.Premigrate, p.Interval.String()
}

func withDefaults(p Policy) Policy {
	if p.Interval <= 0 || p.High <= p.Low {
		panic("migrate: a Policy without Interval, High and Low (settings.Defaults has them)")
	}
	d := DefaultPolicy()
	if p.Workers <= 0 {
		p.Workers = d.Workers
	}
	if p.MaxCandidates <= 0 {
		p.MaxCandidates = d.MaxCandidates
	}
	return p
}

func (m *Monitor) current() Policy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.policy
}

func (m *Monitor) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Start checks at once (a new owner carries on where the old one left),
// then every interval.
func (m *Monitor) Start(ctx context.Context) {
	m.ctx, m.cancel = context.WithCancel(ctx)
	go m.loop()
}

// Close stops the monitor; a cycle in progress stops between files (a
// file being migrated stops where migration stops safely).
func (m *Monitor) Close() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
	m.mu.Lock()
	for _, w := range m.waiters {
		close(w)
	}
	m.waiters = nil
	m.mu.Unlock()
}

func (m *Monitor) loop() {
	defer close(m.done)
	interval := m.current().Interval
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.checkSafely()
		if p := m.current(); p.Interval != interval {
			interval = p.Interval
			t.Reset(interval)
		}
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		case <-m.kick:
		}
	}
}

// checkSafely runs one check; a panic is logged and the monitor goes on
// at the next interval rather than taking the node down.
func (m *Monitor) checkSafely() {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("space monitor check failed", "fs", m.root.Path(), "panic", r)
		}
	}()
	m.check()
}

// Stuck reports a check that has finished no file for longer than after
// (an archive or a backing directory that hangs): the watchdog restarts
// the DM session, then gives the filesystem up.
func (m *Monitor) Stuck(after time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.busy && time.Since(m.progress) > after
}

func (m *Monitor) setBusy(busy bool) {
	m.mu.Lock()
	m.busy, m.progress = busy, time.Now()
	m.mu.Unlock()
}

// Status is the monitor's state for `cascadefs status`.
func (m *Monitor) Status() SpaceStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.status
	s.Space = m.space
	return s
}

// Space returns the last measurement. Without a quota, usage is one statfs
// away: a measurement older than a second is taken again, so that the mounts see writes that went by kernel
// passthrough (which they cannot count) before the filesystem is full.
func (m *Monitor) Space() dmapi.Space {
	m.mu.Lock()
	sp, p := m.space, m.policy
	m.mu.Unlock()
	if p.Quota > 0 || time.Since(sp.MeasuredAt) < time.Second || m.ctx == nil || m.ctx.Err() != nil {
		return sp
	}
	fresh, err := SpaceOf(m.root, &p, nil)
	if err != nil {
		return sp
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if fresh.MeasuredAt.After(m.space.MeasuredAt) {
		m.space, m.grown = fresh, 0
	}
	return m.space
}

// OutOfSpace handles an out-of-space event: a write of need more bytes
// failed with ENOSPC or would pass the quota. It waits for the next check,
// which runs a cycle if the bytes do not fit, and answers with the space
// then, or dmapi.ErrNoSpace if they still do not fit.
func (m *Monitor) OutOfSpace(ctx context.Context, need int64) (dmapi.Space, error) {
	w := make(chan struct{})
	m.mu.Lock()
	if m.ctx.Err() != nil { // closed: Close answered the waiters already
		m.mu.Unlock()
		return m.space, dmapi.ErrClosed
	}
	if need > m.need {
		m.need = need
	}
	m.waiters = append(m.waiters, w)
	m.mu.Unlock()
	m.wake()
	select {
	case <-w:
	case <-ctx.Done():
		return m.Space(), ctx.Err()
	}
	sp := m.Space()
	if m.ctx.Err() != nil {
		return sp, dmapi.ErrClosed
	}
	if sp.Usage+need > sp.Capacity {
		return sp, dmapi.ErrNoSpace
	}
	return sp, nil
}

// measure reads usage: allocated blocks of the tree under a quota (what du
// counts), else of the whole backing filesystem. With a quota it walks the
// tree, and returns the scan, with its next candidates.
//
// Reading stub records doubles a walk's system calls, so the candidates
// shown in status are refreshed only every candidatesEvery intervals (and
// after each cycle); other walks count blocks only.
func (m *Monitor) measure(ctx context.Context, p *Policy, candidates bool) (dmapi.Space, *Scan, error) {
	sp := dmapi.Space{Quota: p.Quota, MeasuredAt: time.Now()}
	m.mu.Lock()
	candidates = candidates || time.Since(m.status.ScannedAt) >= candidatesEvery*p.Interval
	m.mu.Unlock()
	var scan *Scan
	if p.Quota > 0 || candidates {
		var err error
		scan, err = p.Scan(ctx, m.root, ScanOptions{Keep: statusCandidates, NoRecords: !candidates}, time.Now())
		if err != nil {
			return sp, nil, err
		}
		if !candidates {
			scan.Candidates = nil // none looked for: keep the last ones shown
		}
	}
	sp, err := SpaceOf(m.root, p, scan)
	return sp, scan, err
}

// SpaceOf is the space the policy judges: with a quota, the blocks of the
// tree that scan walked; without, the whole backing filesystem, as df
// counts it (blocks reserved for root are not capacity).
func SpaceOf(root *beneath.Root, p *Policy, scan *Scan) (dmapi.Space, error) {
	sp := dmapi.Space{Quota: p.Quota, MeasuredAt: time.Now()}
	if p.Quota > 0 {
		sp.Usage, sp.Capacity = scan.Usage, p.Quota
	} else {
		var fs unix.Statfs_t
		if err := unix.Fstatfs(root.FD(), &fs); err != nil {
			return sp, fmt.Errorf("statfs %s: %w", root.Path(), err)
		}
		sp.Usage = int64(fs.Blocks-fs.Bfree) * fs.Frsize
		sp.Capacity = sp.Usage + int64(fs.Bavail)*fs.Frsize
	}
	sp.HighBytes = sp.Capacity * int64(p.High) / 100
	return sp, nil
}

// candidatesEvery: how many intervals the candidates shown in status may age.
const candidatesEvery = 10

func (m *Monitor) publish(sp dmapi.Space, scan *Scan) {
	m.mu.Lock()
	m.space, m.grown = sp, 0
	if scan != nil && scan.Candidates != nil {
		m.status.Next = scan.Candidates
		if len(m.status.Next) > statusCandidates {
			m.status.Next = m.status.Next[:statusCandidates]
		}
		m.status.ScannedAt = sp.MeasuredAt
	}
	m.mu.Unlock()
}

// check measures, runs a cycle when needed, and answers the out-of-space
// requests that were waiting when it began.
func (m *Monitor) check() {
	m.mu.Lock()
	waiters, need := m.waiters, m.need
	m.waiters, m.need = nil, 0
	m.mu.Unlock()
	m.setBusy(true)
	defer m.setBusy(false)
	defer func() {
		for _, w := range waiters {
			close(w)
		}
	}()
	p := m.current()
	sp, scan, err := m.measure(m.ctx, &p, false)
	m.setError(err)
	if err != nil {
		if m.ctx.Err() == nil {
			m.log.Warn("space monitor cannot measure usage", "root", m.root.Path(), "err", err)
		}
		return
	}
	m.publish(sp, scan)
	high := sp.Capacity * int64(p.High) / 100
	var reason string
	switch {
	case need > 0 && sp.Usage+need > sp.Capacity:
		reason = fmt.Sprintf("out of space: a write needs %d bytes more", need)
	case sp.Usage > high:
		reason = fmt.Sprintf("usage %d%% over high threshold %d%%", percent(sp.Usage, sp.Capacity), p.High)
	default:
		return
	}
	c := m.cycle(&p, sp, need, reason)
	after, scan, err := m.measure(m.ctx, &p, true)
	if err == nil {
		m.publish(after, scan)
		c.UsageAfter = after.Usage
	}
	m.mu.Lock()
	m.status.LastCycle = &c
	m.status.Cycles++
	m.mu.Unlock()
	if m.Cycled != nil {
		m.Cycled(c)
	}
	m.log.Info("space monitor cycle", "root", m.root.Path(), "reason", reason, "files", c.Files, "bytes", c.Bytes,
		"premigrated", c.Premigrated, "failed", c.Failed, "usage_before", c.UsageBefore, "usage_after", c.UsageAfter,
		"duration", c.Duration.Round(time.Millisecond), "stopped", c.Stopped)
}

func (m *Monitor) setError(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status.Error = ""
	if err != nil && m.ctx.Err() == nil {
		m.status.Error = err.Error()
	}
}

func percent(n, of int64) int64 {
	if of <= 0 {
		return 0
	}
	return n * 100 / of
}

// cycle migrates candidates until usage is under the low threshold (and
// need fits), instant releases first, then premigrates further candidates
// up to the premigration percentage.
func (m *Monitor) cycle(p *Policy, sp dmapi.Space, need int64, reason string) Cycle {
	c := Cycle{Reason: reason, Start: time.Now(), UsageBefore: sp.Usage, waited: need > 0}
	defer func() { c.Duration = time.Since(c.Start) }()
	toFree := sp.Usage - sp.Capacity*int64(p.Low)/100
	if x := sp.Usage + need - sp.Capacity; x > toFree {
		toFree = x
	}
	keepPremigrated := sp.Capacity * int64(p.Premigrate) / 100
	scan, err := p.Scan(m.ctx, m.root, ScanOptions{Want: toFree + keepPremigrated, Keep: statusCandidates}, time.Now())
	if err != nil {
		c.Stopped = m.ctx.Err() != nil
		return c
	}
	c.ScanDuration, c.ScannedFiles = scan.Duration, scan.Files
	cands := scan.Candidates

	// Release until enough is freed; a batch asks for just what is missing,
	// so a failed file is made up for by the next ones.
	var freed int64
	i := 0
	for freed < toFree && i < len(cands) && m.ctx.Err() == nil && c.Blocked == "" {
		var batch []Candidate
		for sum := int64(0); i < len(cands) && sum < toFree-freed; i++ {
			batch = append(batch, cands[i])
			sum += cands[i].frees()
		}
		for _, r := range m.run(p, batch, false, &c) {
			// A stub may keep a block for its record: count it as not freed,
			// so that the cycle ends under low, not just at it.
			freed += max(0, r.Released-xattrBlock)
			c.Files++
			c.Bytes += r.Released
			c.Uploaded += r.Uploaded
		}
	}
	c.Unfreeable = freed < toFree && m.ctx.Err() == nil && c.Blocked == ""
	if c.Blocked != "" {
		m.log.Warn("space monitor: releases blocked; premigrating only", "reason", c.Blocked)
	}

	// Premigrate what is left, best first, up to the premigration target.
	premigrated := scan.Instant - freed
	if premigrated < 0 {
		premigrated = 0
	}
	var batch []Candidate
	for ; i < len(cands) && premigrated < keepPremigrated; i++ {
		if !cands[i].Instant {
			batch = append(batch, cands[i])
			premigrated += cands[i].Alloc
		}
	}
	for _, r := range m.run(p, batch, true, &c) {
		c.Premigrated++
		c.PremigratedB += r.Uploaded
		c.Uploaded += r.Uploaded
	}
	c.Stopped = m.ctx.Err() != nil
	return c
}

// run migrates a batch, Workers at a time, and returns the results of the
// files that succeeded; failures are counted in c.
func (m *Monitor) run(p *Policy, batch []Candidate, premigrateOnly bool, c *Cycle) []Result {
	var (
		mu   sync.Mutex
		out  []Result
		wg   sync.WaitGroup
		sema = make(chan struct{}, p.Workers)
	)
	for _, cand := range batch {
		mu.Lock()
		blocked := c.Blocked != ""
		mu.Unlock()
		if m.ctx.Err() != nil || blocked {
			break
		}
		sema <- struct{}{}
		wg.Add(1)
		go func(cand Candidate) {
			defer func() { <-sema; wg.Done() }()
			ctx := m.ctx
			if c.waited {
				ctx = context.WithValue(ctx, waitedKey{}, true)
			}
			res, err := m.mig.MigrateIdle(ctx, cand.Path, cand.Ino, premigrateOnly)
			m.setBusy(true) // progress
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, dmapi.ErrPeerDown) {
				// Every release would fail alike: stop asking. The upload
				// happened, so the file is premigrated for later.
				c.Blocked = err.Error()
				return
			}
			if errors.Is(err, dmapi.ErrBusy) {
				c.Busy++ // premigrated now; released by a later cycle
				return
			}
			if err != nil {
				if m.ctx.Err() == nil && !errors.Is(err, context.Canceled) {
					c.Failed++
					if len(c.FirstFailures) < 5 {
						c.FirstFailures = append(c.FirstFailures, err.Error())
					}
					m.log.Warn("space monitor: migration failed", "file", cand.Path, "err", err)
				}
				return
			}
			out = append(out, res)
		}(cand)
	}
	wg.Wait()
	return out
}
