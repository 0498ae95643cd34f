// Package owner holds every ownership decision of a node, in one type and
// without I/O: its lease (valid until when, lapses counted), the quorum
// rule, and what to do about each filesystem (take one without owner,
// take over from a node whose lease lapsed, claim a fresh epoch, start
// or stop a session, give up in a minority). The node (package cluster)
// gathers what it sees, asks the State, carries out the actions it
// returns and reports back; the simulator (sim_test.go) drives the same
// State through pauses, partitions, clock drift and jumps, kills and
// delayed messages. Time is a node's boot clock (internal/clock): it
// runs on while the host is suspended.
//
// The rules:
//
//   - A node acts for a filesystem (commits, recalls) only while its lease
//     is valid by its own clock: renewed less than the TTL minus a margin
//     ago, counted from when the renewal was sent. The others judge the
//     lease lapsed only after a whole TTL by their own clocks (or the etcd
//     servers', which grant whole seconds), so the owner has stopped
//     before anybody takes over.
//   - A filesystem is taken from its owner only once the owner's lease
//     lapsed (the repository's Claim checks it), never because gossip says
//     it failed: gossip only makes the others look sooner.
//   - A node that sees fewer than half of the nodes holding live leases
//     (itself included; a tie goes to the half with the smallest name)
//     gives its filesystems up after a whole lease in that minority, and
//     takes none.
//   - Every process claims a fresh epoch for what it owns, and so does a
//     process after each lapse of its lease. A session is bound to the
//     lapse count at its epoch's claim: what it started before a lapse
//     commits nothing, even once the lease is renewed. The count is read
//     without any lock that I/O holds.
package owner

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/repo"
)

// ErrNotActing: this node may not act for the filesystem now.
var ErrNotActing = errors.New("fenced: this node may not act")

// Margin is how long before the TTL's end a node stops acting: for
// clocks that run at slightly different rates and for the time a commit
// takes after its check.
func Margin(ttl time.Duration) time.Duration { return max(ttl/5, 100*time.Millisecond) }

// State is one node process's ownership state. Its methods are safe for
// concurrent use; none blocks on anything but its own short lock.
type State struct {
	name string
	ttl  time.Duration

	mu      sync.Mutex
	until   time.Duration // the lease is valid before this (boot clock); 0 before the first renewal
	noted   bool          // this lapse is counted
	started time.Duration
	// minoritySince: since when every look at the quorum found this node
	// in a minority; inMinority says whether it is now.
	minoritySince time.Duration
	inMinority    bool
	claims        map[string]claim // fs -> the epoch this process claimed last

	lapses atomic.Uint64 // changed under mu, read without it
}

// claim is an epoch this process claimed, and the lapse count then.
type claim struct{ epoch, gen uint64 }

// New is the state of a node process named name with lease TTL ttl,
// started at now.
func New(name string, ttl time.Duration, now time.Duration) *State {
	return &State{name: name, ttl: ttl, started: now, claims: map[string]claim{}}
}

// TTL is the lease's time to live.
func (s *State) TTL() time.Duration { return s.ttl }

// Renewed records a renewal that was sent at sent and answered at now;
// it returns how long the lease is valid from now (0 or less: lapsed).
func (s *State) Renewed(sent, now time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.until = max(s.until, sent+s.ttl-Margin(s.ttl))
	left := s.until - now
	if left > 0 {
		s.noted = false
	}
	return left
}

// Valid reports whether the lease is valid at now.
func (s *State) Valid(now time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return now < s.until
}

// NoteLapse counts a lapse of the lease (once per lapse) and reports
// whether the lease has lapsed at now.
func (s *State) NoteLapse(now time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now < s.until {
		return false
	}
	if !s.noted {
		s.noted = true
		s.lapses.Add(1)
	}
	return true
}

// Acting fails unless this node may act now for a session bound to lapse
// count gen: its lease is valid and has not lapsed since the claim.
func (s *State) Acting(now time.Duration, gen uint64) error {
	if !protect.Off(protect.LeaseValidity) && s.NoteLapse(now) {
		return fmt.Errorf("%w (this node's lease lapsed)", ErrNotActing)
	}
	if s.lapses.Load() != gen && !protect.Off(protect.LapseBinding) {
		return fmt.Errorf("%w (this node's lease lapsed since the session started)", ErrNotActing)
	}
	return nil
}

// Gen is the lapse count now: read it before sending a claim, and give
// it to Claimed with the answer.
func (s *State) Gen() uint64 { return s.lapses.Load() }

// Claimed notes an epoch this process got for fs, by a claim sent at
// lapse count gen: a claim sent before a lapse and answered after it
// counts for nothing (the next plan claims again).
func (s *State) Claimed(fs string, epoch, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.claims[fs] = claim{epoch: epoch, gen: gen}
}

// Relinquish forgets the claim of fs at epoch: the node is about to
// leave fs without owner (a Move to ""), after which another node claims
// it at once, without waiting for this node's lease. So no session of
// this process may serve that epoch again, even if the Move is slow to
// land: a later plan claims a fresh epoch instead (which fails once the
// Move landed).
func (s *State) Relinquish(fs string, epoch uint64) {
	if protect.Off(protect.Relinquish) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.claims[fs]; ok && c.epoch == epoch {
		delete(s.claims, fs)
	}
}

// ClaimedIn gives the lapse count of fs's epoch if this process claimed
// it and the lease has not lapsed since.
func (s *State) ClaimedIn(fs string, epoch uint64) (gen uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.claims[fs]
	return c.gen, ok && c.epoch == epoch && (c.gen == s.lapses.Load() || protect.Off(protect.LapseBinding))
}

// Quorum judges whether this node sees at least half of the nodes that
// hold live leases (itself included; a tie goes to the half that holds
// the smallest name), and notes since when the answer has been no. It
// says why not, and which leases are live.
func (s *State) Quorum(now time.Duration, leases []repo.NodeLease, alive func(string) bool) (bool, string, map[string]bool) {
	liveSet := map[string]bool{s.name: true}
	live := []string{s.name}
	for _, l := range leases {
		if l.Live && l.Node != s.name {
			live = append(live, l.Node)
			liveSet[l.Node] = true
		}
	}
	slices.Sort(live)
	seen := 0
	for _, name := range live {
		if name == s.name || alive(name) {
			seen++
		}
	}
	ok := 2*seen > len(live) || (2*seen == len(live) && (live[0] == s.name || alive(live[0])))
	s.mu.Lock()
	switch {
	case ok:
		s.inMinority = false
	case !s.inMinority:
		s.inMinority, s.minoritySince = true, now
	}
	s.mu.Unlock()
	if ok {
		return true, "", liveSet
	}
	return false, fmt.Sprintf("sees %d of the %d nodes with live leases", seen, len(live)), liveSet
}

// settling: just started, or in a minority for less than a lease: gossip
// calls a busy or just woken peer failed for a moment, and such a moment
// must not move a filesystem.
func (s *State) settling(now time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return now-s.started < s.ttl || !s.inMinority || now-s.minoritySince < s.ttl
}

// View is what a node sees when it plans: the repository's filesystems,
// the quorum (from Quorum), gossip, and its own mounts and sessions.
type View struct {
	Now     time.Duration
	FS      []repo.FS
	Quorate bool
	Why     string          // why not quorate
	Live    map[string]bool // nodes with live leases
	// Dead: gossip says the node failed or left (or it is no member and
	// does not answer).
	Dead func(node string) bool
	// Ineligible says why this node cannot take fs now ("" if it can):
	// not mounted, unhealthy, given up lately, at its maximum.
	Ineligible func(fs repo.FS) string
	// Healthy: fs is mounted here and can be served.
	Healthy func(fs string) bool
	// Running gives the epoch of fs's session here, if one runs.
	Running func(fs string) (epoch uint64, ok bool)
}

// Kind is what an Action asks the node to do.
type Kind int

const (
	Take       Kind = iota // claim FS, which has no owner (repo.Claim from "")
	TakeOver               // queue a takeover of FS from From, whose lease lapsed or who is gone
	ClaimEpoch             // claim a fresh epoch of FS, which this node owns (repo.Claim from itself)
	Start                  // start FS's session at FS.Epoch (claimed: see ClaimedIn)
	Stop                   // stop FS's session (Why)
	GiveUp                 // stop FS's session and leave FS without owner (repo.Move to ""): a minority; relinquished already
)

// Action is one step for the node to carry out.
type Action struct {
	Kind Kind
	FS   repo.FS
	From string // TakeOver: the owner
	Why  string
}

// Plan decides what to do about every filesystem this node may serve.
func (s *State) Plan(v View) []Action {
	var out []Action
	valid := s.Valid(v.Now)
	settling := s.settling(v.Now)
	for _, fs := range v.FS {
		if !fs.IsCandidate(s.name) {
			if _, ok := v.Running(fs.Name); ok {
				out = append(out, Action{Kind: Stop, FS: fs, Why: "no longer a candidate"})
			}
			continue
		}
		mine := fs.Owner == s.name
		_, running := v.Running(fs.Name)
		switch {
		case fs.Owner != "" && !mine:
			if running {
				out = append(out, Action{Kind: Stop, FS: fs, Why: "owner is now " + fs.Owner})
			}
			if v.Quorate && (!v.Live[fs.Owner] || v.Dead(fs.Owner)) {
				out = append(out, Action{Kind: TakeOver, FS: fs, From: fs.Owner, Why: "owner " + fs.Owner + " is gone"})
			}
		case fs.Owner == "":
			if running {
				out = append(out, Action{Kind: Stop, FS: fs, Why: "it has no owner"})
			}
			if v.Quorate && valid && v.Ineligible(fs) == "" {
				out = append(out, Action{Kind: Take, FS: fs, Why: "had no owner"})
			}
		case !v.Quorate && !settling && !protect.Off(protect.QuorumRule):
			s.Relinquish(fs.Name, fs.Epoch)
			out = append(out, Action{Kind: GiveUp, FS: fs, Why: "minority: " + v.Why})
		case v.Quorate && valid && v.Healthy(fs.Name):
			if _, ok := s.ClaimedIn(fs.Name, fs.Epoch); !ok {
				out = append(out, Action{Kind: ClaimEpoch, FS: fs, Why: "a new epoch for this process of " + s.name})
			} else if epoch, ok := v.Running(fs.Name); !ok || epoch != fs.Epoch {
				out = append(out, Action{Kind: Start, FS: fs})
			}
		}
	}
	return out
}

// MayTake says why this node may not claim a filesystem now ("" if it
// may): its lease must be valid and it must not be in a minority.
func (s *State) MayTake(now time.Duration, quorate bool, why string) string {
	switch {
	case !quorate:
		return why
	case !s.Valid(now):
		return "this node's lease is not valid"
	}
	return ""
}
