package owner

// A deterministic simulator of the ownership protocol: several node
// processes drive their State as package cluster does (renewals four
// times per TTL, a reconcile every two seconds, takeovers, commits that
// pass the fence), against an in-memory repository with the rules of
// bbolt or of etcd (repo.Memory), through pauses (SIGSTOP, a long GC, a
// suspended host), clocks that drift, partitions from the repository and
// from gossip, kill -9, clean stops and restarts, and messages delayed
// far past the lease. One seed decides everything: a failing seed
// replays exactly (CASCADEFS_SIM_SEED=N prints its trace).
//
// Checked at every step:
//   - fencing: no commit for a filesystem at epoch e after another claim
//     of it (at a later epoch) was applied: no two acting windows overlap;
//   - a session commits only while its node's lease has stayed valid
//     since its epoch was claimed (tracked here on its own, not by State);
//   - no filesystem is claimed from an owner whose process still holds
//     its lease valid by its own clock;
//   - after the faults end, every filesystem is owned by a live node that
//     serves it within a bound.

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/repo"
)

const (
	simTTL       = 2 * time.Second
	simReconcile = 2 * time.Second
	simChaos     = 40 * time.Second // faults happen in [0, simChaos)
	simCalm      = 25 * time.Second // then none: everything must settle
	// simBound: how long after the faults end every filesystem must be
	// served (three TTLs for leases to lapse and takeovers to retry, two
	// reconciles, the longest message delay of the calm phase).
	simBound        = 3*simTTL + 2*simReconcile + time.Second
	simGossipDetect = 1500 * time.Millisecond // a peer paused this long looks failed
)

func TestSimulation(t *testing.T) {
	if s := os.Getenv("CASCADEFS_SIM_SEED"); s != "" {
		seed, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		r := runSim(seed, true)
		t.Log("\n" + strings.Join(r.trace, "\n"))
		if r.fail != "" {
			t.Fatalf("seed %d: %s", seed, r.fail)
		}
		return
	}
	seeds := int64(10000)
	if s := os.Getenv("CASCADEFS_SIM_SEEDS"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			t.Fatalf("CASCADEFS_SIM_SEEDS=%q", s)
		}
		seeds = n
	}
	start := time.Now()
	var next atomic.Int64
	var mu sync.Mutex
	var failed []string
	failures := 0
	var stats simStats
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seed := next.Add(1)
				if seed > seeds {
					return
				}
				r := runSim(seed, false)
				mu.Lock()
				stats.add(r.stats)
				if r.fail != "" {
					failures++
					if len(failed) < 10 {
						failed = append(failed, fmt.Sprintf("seed %d: %s", seed, r.fail))
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d seeds in %v: %s", seeds, time.Since(start).Round(time.Millisecond), stats)
	if len(failed) > 0 {
		t.Fatalf("%d of %d seeds failed (replay one: CASCADEFS_SIM_SEED=N go test -run TestSimulation -v ./cluster/owner):\n%s",
			failures, seeds, strings.Join(failed, "\n"))
	}
}

// simStats counts what the seeds went through, so that a run shows the
// faults really happened.
type simStats struct {
	commits, refused, claims, takeovers, lapses, pauses, kills, stops, cuts int
}

func (s *simStats) add(o simStats) {
	s.commits += o.commits
	s.refused += o.refused
	s.claims += o.claims
	s.takeovers += o.takeovers
	s.lapses += o.lapses
	s.pauses += o.pauses
	s.kills += o.kills
	s.stops += o.stops
	s.cuts += o.cuts
}

func (s simStats) String() string {
	return fmt.Sprintf("%d commits, %d refused by the fence, %d claims (%d takeovers), %d lapses; faults: %d pauses, %d kills, %d clean stops, %d cuts",
		s.commits, s.refused, s.claims, s.takeovers, s.lapses, s.pauses, s.kills, s.stops, s.cuts)
}

// event is something that happens at a real time (ns), to a node process.
type event struct {
	at   int64
	seq  int64
	node *simNode
	inc  int // the node's incarnation when scheduled: dropped if it died
	fn   func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any     { old := *q; e := old[len(old)-1]; *q = old[:len(old)-1]; return e }

type sim struct {
	rng   *rand.Rand
	now   int64
	seq   int64
	queue eventQueue
	mem   *repo.Memory
	nodes []*simNode
	fs    []string
	// claimsOf: per filesystem, when each epoch was claimed (real time)
	// and by whom.
	claimsOf map[string]map[uint64]claimRec
	calm     bool
	traceOn  bool
	trace    []string
	fail     string
	stats    simStats
}

type claimRec struct {
	at int64
	by string
}

type simResult struct {
	fail  string
	trace []string
	stats simStats
}

// simNode is one node name; its process (State, repository handle,
// sessions) is replaced at each restart.
type simNode struct {
	s    *sim
	name string
	rate float64 // its clock's rate against real time
	base int64   // its boot clock at real time 0

	inc         int // incarnation: a restart makes a new process
	up          bool
	pausedAt    int64
	pausedUntil int64
	// suspends: the host's suspends (real time): CLOCK_MONOTONIC stops
	// in them, the boot clock does not.
	suspends  [][2]int64
	repoCut   bool
	gossipCut bool

	st       *State
	h        *repo.Handle
	sessions map[string]*simSession
	taking   map[string]bool // takeovers in progress
	// The lease as tracked here, apart from State: each renewal the
	// repository applied makes the lease valid from its sending for the
	// TTL minus the margin (node clock), known to the node or not.
	valid [][2]time.Duration
	// noticedAt: when State counted a lapse of the lease (node clock).
	noticedAt []time.Duration
	// claimSent: when the claim of each (fs, epoch) was sent.
	claimSent map[string]time.Duration
}

type simSession struct {
	epoch, gen uint64
	// claimSent: when the claim of its epoch was sent (node clock). A
	// lapse the node saw after it voids the session for good.
	claimSent time.Duration
}

func runSim(seed int64, traceOn bool) simResult {
	rng := rand.New(rand.NewSource(seed))
	s := &sim{rng: rng, claimsOf: map[string]map[uint64]claimRec{}, traceOn: traceOn}
	s.mem = repo.NewMemory(rng.Intn(2) == 0, func() time.Duration { return time.Duration(s.now) })
	s.fs = []string{"a", "b"}
	admin := s.mem.Handle("admin", func() time.Duration { return time.Duration(s.now) })
	for _, name := range s.fs {
		admin.AddFS(repo.FS{Name: name})
		s.claimsOf[name] = map[uint64]claimRec{}
	}
	count := 2 + rng.Intn(3)
	for i := 0; i < count; i++ {
		n := &simNode{s: s, name: fmt.Sprintf("n%d", i+1), rate: 1 + (rng.Float64()-0.5)*0.02, base: rng.Int63n(int64(time.Hour))}
		s.nodes = append(s.nodes, n)
	}
	s.logf("seed %d: %d nodes, engine %s", seed, count, map[bool]string{true: "etcd", false: "bbolt"}[s.mem.Etcd])
	for _, n := range s.nodes {
		s.at(int64(rng.Intn(int(time.Second))), nil, n.start)
	}
	s.scheduleChaos()
	s.at(int64(simChaos), nil, s.beginCalm)
	end := int64(simChaos + simCalm)
	s.at(end, nil, s.checkSettled)
	for s.queue.Len() > 0 && s.fail == "" {
		e := heap.Pop(&s.queue).(*event)
		if e.at > end {
			break
		}
		s.now = e.at
		if e.node != nil {
			if !e.node.up || e.node.inc != e.inc {
				continue // its process died
			}
			if e.node.pausedUntil > s.now {
				e.at = e.node.pausedUntil
				s.push(e)
				continue
			}
		}
		e.fn()
	}
	return simResult{fail: s.fail, trace: s.trace, stats: s.stats}
}

func (s *sim) logf(format string, args ...any) {
	if s.traceOn {
		s.trace = append(s.trace, fmt.Sprintf("%9.3fs ", float64(s.now)/1e9)+fmt.Sprintf(format, args...))
	}
}

func (s *sim) failf(format string, args ...any) {
	if s.fail == "" {
		s.fail = fmt.Sprintf("at %.3fs: ", float64(s.now)/1e9) + fmt.Sprintf(format, args...)
		s.logf("FAIL: %s", s.fail)
	}
}

func (s *sim) push(e *event) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.queue, e)
}

// at schedules fn at real time at, for node n's current process (nil:
// the world).
func (s *sim) at(at int64, n *simNode, fn func()) {
	e := &event{at: at, node: n, fn: fn}
	if n != nil {
		e.inc = n.inc
	}
	s.push(e)
}

// clock is the node's boot clock at real time t (it runs on through
// pauses and suspends).
func (n *simNode) clock(t int64) time.Duration {
	return time.Duration(n.base + int64(float64(t)*n.rate))
}

// nowC is the clock the node judges its lease by: the boot clock, as
// package cluster's now() (clock.Boot). Judged by n.mono instead (the
// protection boot-clock off), a resumed host believes its lease valid:
// the simulator finds overlaps.
func (n *simNode) nowC() time.Duration {
	if protect.Off(protect.BootClock) {
		return n.mono(n.s.now)
	}
	return n.clock(n.s.now)
}

// mono is CLOCK_MONOTONIC: the boot clock less the time suspended.
func (n *simNode) mono(t int64) time.Duration {
	var off int64
	for _, sp := range n.suspends {
		off += min(t, sp[1]) - min(t, sp[0])
	}
	return n.clock(t) - time.Duration(float64(off)*n.rate)
}

// after schedules fn on this process after d of its own clock.
func (n *simNode) after(d time.Duration, fn func()) {
	n.s.at(n.s.now+int64(float64(d)/n.rate), n, fn)
}

// delay is a message's time on the wire: mostly short, sometimes far past
// the lease (a stalled network, a slow repository).
func (s *sim) delay() int64 {
	switch {
	case s.calm:
		return s.rng.Int63n(int64(20 * time.Millisecond))
	case s.rng.Intn(20) == 0:
		return s.rng.Int63n(int64(3 * simTTL / 2))
	}
	return s.rng.Int63n(int64(30 * time.Millisecond))
}

// call sends a request from n to the repository: apply runs there after
// a delay (unless n is cut off: the request is lost), and answer runs on
// n after another (a lost request's answer is an error after a timeout).
func (n *simNode) call(what string, apply func() error, answer func(error)) {
	s := n.s
	if n.repoCut {
		n.after(time.Second, func() { answer(errors.New("repository unreachable")) })
		return
	}
	inc := n.inc
	// Applied even if the process died meanwhile: the request was on the wire.
	s.at(s.now+s.delay(), nil, func() {
		err := apply()
		s.logf("%s: %s applied: %v", n.name, what, err)
		s.at(s.now+s.delay(), n, func() {
			if n.inc == inc {
				answer(err)
			}
		})
	})
}

func (n *simNode) start() {
	s := n.s
	n.inc++
	n.up = true
	n.st = New(n.name, simTTL, n.nowC())
	inc := n.inc
	n.h = s.mem.Handle(fmt.Sprintf("%s#%d", n.name, inc), func() time.Duration { return n.clock(s.now) })
	n.sessions = map[string]*simSession{}
	n.taking = map[string]bool{}
	n.valid, n.noticedAt, n.claimSent = nil, nil, map[string]time.Duration{}
	s.logf("%s: process %d starts", n.name, inc)
	n.leaseTick()
	n.after(time.Duration(s.rng.Int63n(int64(simReconcile))), n.reconcile)
}

// leaseTick is cluster's leaseTick: a lapse stops the sessions (after a
// while: the node's lock may be held by a slow reconcile), then renew.
func (n *simNode) leaseTick() {
	if n.noteLapse() && len(n.sessions) > 0 {
		n.after(time.Duration(n.s.rng.Int63n(int64(time.Second))), func() {
			if !n.st.Valid(n.nowC()) {
				n.stopAll("lease lapsed")
			}
		})
	}
	sent := n.nowC()
	inc := n.inc
	n.call("renew", func() error {
		err := n.h.Renew(n.name, simTTL)
		if err == nil && n.inc == inc {
			n.valid = append(n.valid, [2]time.Duration{sent, sent + simTTL - Margin(simTTL)})
		}
		return err
	}, func(err error) {
		if err == nil {
			n.st.Renewed(sent, n.nowC())
		}
	})
	n.after(simTTL/4, n.leaseTick)
}

// noteLapse asks State whether the lease lapsed (as the lease loop does),
// noting when State counted a lapse.
func (n *simNode) noteLapse() bool {
	before := n.st.Gen()
	lapsed := n.st.NoteLapse(n.nowC())
	n.noticed(before)
	return lapsed
}

// noticed records a lapse State counted since its count was before.
func (n *simNode) noticed(before uint64) {
	if n.st.Gen() != before {
		n.s.stats.lapses++
		n.noticedAt = append(n.noticedAt, n.nowC())
	}
}

// acting is the fence's check of State, as the node makes it.
func (n *simNode) acting(se *simSession) bool {
	before := n.st.Gen()
	err := n.st.Acting(n.nowC(), se.gen)
	n.noticed(before)
	return err == nil
}

// validAt: the lease, as tracked here, is valid at the node's time x.
func (n *simNode) validAt(x time.Duration) bool {
	for _, v := range n.valid {
		if v[0] <= x && x < v[1] {
			return true
		}
	}
	return false
}

func (n *simNode) stopAll(why string) {
	for fs := range n.sessions {
		n.stop(fs, why)
	}
}

func (n *simNode) stop(fs, why string) {
	if _, ok := n.sessions[fs]; ok {
		delete(n.sessions, fs)
		n.s.logf("%s: session of %s stopped (%s)", n.name, fs, why)
	}
}

// alive is gossip's view from n of the node named name.
func (n *simNode) alive(name string) bool {
	if name == n.name {
		return true
	}
	now := n.s.now
	for _, o := range n.s.nodes {
		if o.name == name {
			pausedLong := o.pausedUntil > now && now-o.pausedAt >= int64(simGossipDetect)
			return o.up && !o.gossipCut && !n.gossipCut && !pausedLong
		}
	}
	return false
}

// pause stops the process for d of real time (its boot clock runs on);
// a suspend of the host stops its monotonic clock too.
func (n *simNode) pause(d int64, suspend bool) {
	if n.up && n.pausedUntil < n.s.now {
		n.s.stats.pauses++
		n.pausedAt, n.pausedUntil = n.s.now, n.s.now+d
		if suspend {
			n.suspends = append(n.suspends, [2]int64{n.s.now, n.s.now + d})
		}
		n.s.logf("%s: paused for %v (suspend: %v)", n.name, time.Duration(d), suspend)
	}
}

func (n *simNode) reconcile() {
	defer n.after(simReconcile, n.reconcile)
	var list []repo.FS
	var leases []repo.NodeLease
	n.call("read", func() error {
		var err error
		if list, err = n.h.ListFS(); err != nil {
			return err
		}
		leases, err = n.h.Leases()
		return err
	}, func(err error) {
		if err != nil {
			return
		}
		now := n.nowC()
		quorate, why, live := n.st.Quorum(now, leases, n.alive)
		plan := n.st.Plan(View{Now: now, FS: list, Quorate: quorate, Why: why, Live: live,
			Dead:       func(name string) bool { return !n.alive(name) },
			Ineligible: func(repo.FS) string { return "" },
			Healthy:    func(string) bool { return true },
			Running: func(fs string) (uint64, bool) {
				if se, ok := n.sessions[fs]; ok {
					return se.epoch, true
				}
				return 0, false
			}})
		for _, a := range plan {
			n.carryOut(a)
		}
	})
}

func (n *simNode) carryOut(a Action) {
	fs := a.FS.Name
	switch a.Kind {
	case Take:
		n.claim(fs, "")
	case ClaimEpoch:
		n.claim(fs, n.name)
	case Start:
		n.startSession(fs, a.FS.Epoch)
	case Stop:
		n.stop(fs, a.Why)
	case GiveUp:
		n.stop(fs, a.Why)
		epoch := a.FS.Epoch
		n.call("give up "+fs, func() error { _, err := n.h.Move(fs, n.name, epoch, "", "given up"); return err }, func(error) {})
	case TakeOver:
		if !n.taking[fs] {
			n.taking[fs] = true
			n.takeOver(fs, a.From, n.nowC()+3*simTTL+time.Second)
		}
	}
}

// claim claims fs from its owner from ("" or this node) and starts its
// session, as cluster's claim and startSession do.
func (n *simNode) claim(fs, from string) {
	if !n.st.Valid(n.nowC()) {
		return
	}
	n.claimFrom(fs, from, func(error) {})
}

func (n *simNode) claimFrom(fs, from string, done func(error)) {
	var got repo.FS
	sent, gen := n.nowC(), n.st.Gen()
	n.call("claim "+fs+" from "+from, func() error {
		var err error
		got, err = n.h.Claim(fs, n.name, from, "sim")
		if err == nil {
			n.s.claimed(n, fs, from, got.Epoch)
		}
		return err
	}, func(err error) {
		if err == nil {
			n.claimSent[fmt.Sprint(fs, got.Epoch)] = sent
			n.st.Claimed(fs, got.Epoch, gen)
			n.startSession(fs, got.Epoch)
		}
		done(err)
	})
}

// takeOver is cluster's takeOver: retry while the owner's lease is live,
// until a deadline.
func (n *simNode) takeOver(fs, from string, deadline time.Duration) {
	var leases []repo.NodeLease
	n.call("leases", func() error { var err error; leases, err = n.h.Leases(); return err }, func(err error) {
		if err != nil {
			n.taking[fs] = false
			return
		}
		ok, why, _ := n.st.Quorum(n.nowC(), leases, n.alive)
		if n.st.MayTake(n.nowC(), ok, why) != "" {
			n.taking[fs] = false
			return
		}
		n.claimFrom(fs, from, func(err error) {
			if errors.Is(err, repo.ErrLeaseLive) && n.nowC() < deadline {
				n.after(simTTL/20, func() { n.takeOver(fs, from, deadline) })
				return
			}
			n.taking[fs] = false
		})
	})
}

func (n *simNode) startSession(fs string, epoch uint64) {
	gen, ok := n.st.ClaimedIn(fs, epoch)
	if !ok {
		return // lapsed since the claim: the next reconcile claims again
	}
	if se, ok := n.sessions[fs]; ok && se.epoch == epoch {
		return
	}
	n.sessions[fs] = &simSession{epoch: epoch, gen: gen, claimSent: n.claimSent[fmt.Sprint(fs, epoch)]}
	n.s.logf("%s: session of %s at epoch %d (gen %d)", n.name, fs, epoch, gen)
	n.commitLoop(fs, n.sessions[fs])
}

// commitLoop commits now and then through the fence, as a DM session
// does: the lease and lapse count checked, Confirm asked, checked again.
func (n *simNode) commitLoop(fs string, se *simSession) {
	n.after(time.Duration(50+n.s.rng.Intn(400))*time.Millisecond, func() {
		if n.sessions[fs] != se {
			return // stopped (its in-flight commits still come back below)
		}
		n.commitLoop(fs, se)
		if !n.acting(se) {
			n.s.stats.refused++
			return
		}
		n.call("confirm "+fs, func() error { return n.h.Confirm(fs, n.name, se.epoch) }, func(err error) {
			// A stopped session's fence refuses (daemon.DM after Close).
			if err != nil || n.sessions[fs] != se || !n.acting(se) {
				n.s.stats.refused++
				return
			}
			n.s.committed(n, fs, se)
		})
	})
}

// claimed checks a claim as the repository applies it, and notes it.
func (s *sim) claimed(by *simNode, fs, from string, epoch uint64) {
	s.stats.claims++
	if from != "" && from != by.name {
		s.stats.takeovers++
		for _, o := range s.nodes {
			if o.name == from && o.up && o.st.Valid(o.nowC()) {
				s.failf("%s claimed %s from %s, whose process %d holds its lease valid by its own clock", by.name, fs, from, o.inc)
			}
		}
	}
	s.claimsOf[fs][epoch] = claimRec{at: s.now, by: by.name}
	s.logf("%s: claimed %s at epoch %d (from %q)", by.name, fs, epoch, from)
}

// committed checks a commit as it happens.
func (s *sim) committed(n *simNode, fs string, se *simSession) {
	s.stats.commits++
	// Another node's window opens at its claim; this node's own next
	// epoch only once its session starts (the old one is stopped first).
	for epoch, c := range s.claimsOf[fs] {
		if epoch > se.epoch && c.at <= s.now && c.by != n.name {
			s.failf("%s committed for %s at epoch %d after %s claimed epoch %d (%.3fs): two acting windows overlap",
				n.name, fs, se.epoch, c.by, epoch, float64(c.at)/1e9)
		}
	}
	if !n.validAt(n.nowC()) {
		s.failf("%s committed for %s at epoch %d without a valid lease", n.name, fs, se.epoch)
	}
	if slices.ContainsFunc(n.noticedAt, func(x time.Duration) bool { return x > se.claimSent }) {
		s.failf("%s committed for %s at epoch %d in a session from before a lapse of its lease", n.name, fs, se.epoch)
	}
}

// scheduleChaos draws the faults of the chaos phase.
func (s *sim) scheduleChaos() {
	for t := int64(0); t < int64(simChaos); t += s.rng.Int63n(int64(3 * time.Second)) {
		n := s.nodes[s.rng.Intn(len(s.nodes))]
		at := t
		switch k := s.rng.Intn(10); {
		case k < 4: // SIGSTOP, a long GC pause, a suspended host: from a blink to several leases
			d := s.rng.Int63n(int64(3 * simTTL))
			suspend := s.rng.Intn(3) == 0
			s.at(at, nil, func() { n.pause(d, suspend) })
		case k < 6: // kill -9, restarted a while later
			s.at(at, nil, func() {
				if n.up {
					s.stats.kills++
					s.logf("%s: killed", n.name)
					n.up = false
					s.at(s.now+s.rng.Int63n(int64(4*simTTL)), nil, func() { n.pausedUntil = 0; n.start() })
				}
			})
		case k < 7: // a clean stop (sessions stopped, handed over, lease dropped) and a restart
			s.at(at, nil, func() {
				if n.up && n.pausedUntil <= s.now {
					s.stats.stops++
					n.cleanStop()
					s.at(s.now+s.rng.Int63n(int64(simTTL)), nil, func() { n.start() })
				}
			})
		case k < 9: // cut from the repository, or from gossip, for a while
			d := s.rng.Int63n(int64(3 * simTTL))
			gossip := k == 8
			s.at(at, nil, func() {
				s.stats.cuts++
				if gossip {
					n.gossipCut = true
				} else {
					n.repoCut = true
				}
				s.logf("%s: cut from %s for %v", n.name, map[bool]string{true: "gossip", false: "the repository"}[gossip], time.Duration(d))
				s.at(s.now+d, nil, func() { n.gossipCut, n.repoCut = false, false })
			})
		default: // a second node pauses at once (two slow peers)
			m := s.nodes[s.rng.Intn(len(s.nodes))]
			d := s.rng.Int63n(int64(2 * simTTL))
			s.at(at, nil, func() { n.pause(d, false); m.pause(d, false) })
		}
	}
}

// cleanStop is cluster's Stop at SIGTERM: sessions stopped, what it owns
// handed over (no owner), the lease dropped, at once (a stopping process
// does not wait for the wire: the calls are applied directly).
func (n *simNode) cleanStop() {
	s := n.s
	s.logf("%s: stops cleanly", n.name)
	for fs, se := range n.sessions {
		n.stop(fs, "node stopping")
		if _, err := n.h.Move(fs, n.name, se.epoch, "", "stopping"); err == nil {
			s.logf("%s: handed %s over", n.name, fs)
		}
	}
	n.h.DropLease(n.name)
	n.up = false
}

func (s *sim) beginCalm() {
	s.calm = true
	s.logf("calm: no more faults")
	for _, n := range s.nodes {
		n.pausedUntil = 0
		n.repoCut, n.gossipCut = false, false
		if !n.up {
			s.at(s.now, nil, n.start)
		}
	}
	s.at(s.now+int64(simBound), nil, s.checkServed)
}

// checkServed: every filesystem is owned by a live node that serves it
// at its current epoch, within the bound after the faults ended.
func (s *sim) checkServed() {
	admin := s.mem.Handle("check", func() time.Duration { return time.Duration(s.now) })
	for _, name := range s.fs {
		fs, _ := admin.GetFS(name)
		var owner *simNode
		for _, n := range s.nodes {
			if n.name == fs.Owner {
				owner = n
			}
		}
		switch {
		case owner == nil:
			s.failf("%s has no owner %v after the faults ended", name, simBound)
		case !owner.up:
			s.failf("%s is owned by %s, which is down, %v after the faults ended", name, fs.Owner, simBound)
		case owner.sessions[name] == nil || owner.sessions[name].epoch != fs.Epoch:
			s.failf("%s is owned by %s at epoch %d, which serves no session at it %v after the faults ended", name, fs.Owner, fs.Epoch, simBound)
		}
	}
}

// checkSettled: at the end, still served, and no owner changed in calm
// but for the takeovers of the bound.
func (s *sim) checkSettled() { s.checkServed() }
