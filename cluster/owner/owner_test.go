package owner

import (
	"errors"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/repo"
)

const ttl = 2 * time.Second

// The lease is valid from its renewal's sending for TTL minus the
// margin, and not a moment longer, however late the answer came.
func TestLeaseValidFromSending(t *testing.T) {
	s := New("n1", ttl, 0)
	if s.Valid(0) {
		t.Fatal("valid before the first renewal")
	}
	end := ttl - Margin(ttl)
	if left := s.Renewed(0, 300*time.Millisecond); left != end-300*time.Millisecond {
		t.Fatalf("left %v", left)
	}
	if !s.Valid(end-1) || s.Valid(end) {
		t.Fatal("validity does not end at sent + TTL - margin")
	}
	// An answer that comes after the validity it grants is no renewal.
	if left := s.Renewed(end+10*time.Millisecond, end+ttl); left > 0 || s.Valid(end+ttl) {
		t.Fatalf("a renewal answered after its own validity counted (%v left)", left)
	}
	// An old renewal answered late never shortens a newer one.
	s.Renewed(10*time.Second, 10*time.Second)
	s.Renewed(9*time.Second, 10*time.Second+time.Millisecond)
	if !s.Valid(10*time.Second + end - 1) {
		t.Fatal("a late old renewal shortened the lease")
	}
}

// A session is bound to the lapse count at its claim: after a lapse its
// commits are refused for good, even once the lease is renewed, and the
// epoch it served must be claimed again.
func TestLapseEndsTheSessionForGood(t *testing.T) {
	s := New("n1", ttl, 0)
	s.Renewed(0, 0)
	s.Claimed("fs", 7, s.Gen())
	gen, ok := s.ClaimedIn("fs", 7)
	if !ok {
		t.Fatal("claimed epoch not known")
	}
	if err := s.Acting(time.Second, gen); err != nil {
		t.Fatalf("acting within the lease: %v", err)
	}
	if err := s.Acting(ttl, gen); !errors.Is(err, ErrNotActing) {
		t.Fatalf("acting after the lease: %v", err)
	}
	s.Renewed(ttl+time.Second, ttl+time.Second)
	if err := s.Acting(ttl+time.Second, gen); !errors.Is(err, ErrNotActing) {
		t.Fatalf("a session from before the lapse acts again after the renewal: %v", err)
	}
	if _, ok := s.ClaimedIn("fs", 7); ok {
		t.Fatal("the epoch claimed before the lapse still counts as claimed")
	}
	s.Claimed("fs", 8, s.Gen())
	if gen2, ok := s.ClaimedIn("fs", 8); !ok || s.Acting(ttl+time.Second, gen2) != nil {
		t.Fatal("a fresh claim after the lapse does not act")
	}
	// A claim sent before a lapse and answered after it counts for nothing.
	sentAt := s.Gen()
	s.NoteLapse(200 * time.Second)
	s.Renewed(200*time.Second, 200*time.Second)
	s.Claimed("fs", 9, sentAt)
	if _, ok := s.ClaimedIn("fs", 9); ok {
		t.Fatal("a claim sent before a lapse counts after it")
	}
	// One lapse is counted once, however often it is looked at.
	before := s.lapses.Load()
	s.NoteLapse(300 * time.Second)
	s.NoteLapse(301 * time.Second)
	if s.lapses.Load() != before+1 {
		t.Fatalf("one lapse counted %d times", s.lapses.Load()-before)
	}
}

func leases(live ...string) []repo.NodeLease {
	var out []repo.NodeLease
	for _, n := range live {
		out = append(out, repo.NodeLease{Node: n, Live: true})
	}
	return out
}

func TestQuorum(t *testing.T) {
	seeing := func(names ...string) func(string) bool {
		return func(n string) bool {
			for _, x := range names {
				if x == n {
					return true
				}
			}
			return false
		}
	}
	for _, c := range []struct {
		self   string
		live   []string
		alive  []string
		quorum bool
	}{
		{"n1", []string{"n1", "n2", "n3"}, []string{"n2"}, true},
		{"n1", []string{"n1", "n2", "n3"}, nil, false},
		{"n1", []string{"n1", "n2"}, nil, true},  // a tie: n1 holds the smallest name
		{"n2", []string{"n1", "n2"}, nil, false}, // a tie without the smallest name
		{"n2", []string{"n1", "n2"}, []string{"n1"}, true},
		{"n3", []string{"n1", "n2", "n3", "n4"}, []string{"n4"}, false}, // a tie, n1 not seen
	} {
		s := New(c.self, ttl, 0)
		if ok, _, _ := s.Quorum(0, leases(c.live...), seeing(c.alive...)); ok != c.quorum {
			t.Errorf("%s with live %v seeing %v: quorum %v, want %v", c.self, c.live, c.alive, ok, c.quorum)
		}
	}
}

// view is a View over fixed answers.
func view(now time.Duration, fs []repo.FS, quorate bool, live map[string]bool, dead map[string]bool, running map[string]uint64) View {
	return View{Now: now, FS: fs, Quorate: quorate, Why: "cut off", Live: live,
		Dead:       func(n string) bool { return dead[n] },
		Ineligible: func(repo.FS) string { return "" },
		Healthy:    func(string) bool { return true },
		Running: func(n string) (uint64, bool) {
			e, ok := running[n]
			return e, ok
		}}
}

func kinds(plan []Action) []Kind {
	var out []Kind
	for _, a := range plan {
		out = append(out, a.Kind)
	}
	return out
}

func TestPlan(t *testing.T) {
	s := New("n1", ttl, 0)
	s.Renewed(0, 0)
	live := map[string]bool{"n1": true, "n2": true}
	free := repo.FS{Name: "a"}
	// Unowned: take it, only with a valid lease and a quorum.
	if k := kinds(s.Plan(view(time.Second, []repo.FS{free}, true, live, nil, nil))); len(k) != 1 || k[0] != Take {
		t.Fatalf("unowned: %v", k)
	}
	if k := kinds(s.Plan(view(time.Second, []repo.FS{free}, false, live, nil, nil))); len(k) != 0 {
		t.Fatalf("unowned in a minority: %v", k)
	}
	if k := kinds(s.Plan(view(ttl, []repo.FS{free}, true, live, nil, nil))); len(k) != 0 {
		t.Fatalf("unowned with a lapsed lease: %v", k)
	}
	// Owned by this process at an epoch it did not claim: a new epoch
	// first, then the session.
	mine := repo.FS{Name: "b", Owner: "n1", Epoch: 3}
	if k := kinds(s.Plan(view(time.Second, []repo.FS{mine}, true, live, nil, nil))); len(k) != 1 || k[0] != ClaimEpoch {
		t.Fatalf("owned, not claimed: %v", k)
	}
	s.Claimed("b", 3, s.Gen())
	if k := kinds(s.Plan(view(time.Second, []repo.FS{mine}, true, live, nil, nil))); len(k) != 1 || k[0] != Start {
		t.Fatalf("owned and claimed: %v", k)
	}
	if k := kinds(s.Plan(view(time.Second, []repo.FS{mine}, true, live, nil, map[string]uint64{"b": 3}))); len(k) != 0 {
		t.Fatalf("running: %v", k)
	}
	// Another owner: stop ours; take over only when its lease is not live
	// or gossip says it is gone.
	theirs := repo.FS{Name: "b", Owner: "n2", Epoch: 4}
	if k := kinds(s.Plan(view(time.Second, []repo.FS{theirs}, true, live, nil, map[string]uint64{"b": 3}))); len(k) != 1 || k[0] != Stop {
		t.Fatalf("replaced: %v", k)
	}
	if k := kinds(s.Plan(view(time.Second, []repo.FS{theirs}, true, map[string]bool{"n1": true}, nil, nil))); len(k) != 1 || k[0] != TakeOver {
		t.Fatalf("owner's lease not live: %v", k)
	}
	if k := kinds(s.Plan(view(time.Second, []repo.FS{theirs}, true, live, map[string]bool{"n2": true}, nil))); len(k) != 1 || k[0] != TakeOver {
		t.Fatalf("owner dead by gossip: %v", k)
	}
	// Minority: given up only after a whole lease in it.
	s2 := New("n1", ttl, 0)
	s2.Renewed(0, 0)
	s2.Claimed("b", 3, s2.Gen())
	s2.Quorum(time.Second, leases("n1", "n2", "n3"), func(string) bool { return false })
	if k := kinds(s2.Plan(view(time.Second, []repo.FS{mine}, false, live, nil, map[string]uint64{"b": 3}))); len(k) != 0 {
		t.Fatalf("a moment in a minority: %v", k)
	}
	s2.Quorum(time.Second+ttl, leases("n1", "n2", "n3"), func(string) bool { return false })
	if k := kinds(s2.Plan(view(time.Second+ttl, []repo.FS{mine}, false, live, nil, map[string]uint64{"b": 3}))); len(k) != 1 || k[0] != GiveUp {
		t.Fatalf("a whole lease in a minority: %v", k)
	}
}

// A filesystem given up (left without owner by a Move that may land
// late) is never served again at that epoch by this process: the plan
// claims a fresh epoch instead, which fails once the Move landed. Found
// by the simulator: served again at the old epoch, the node committed
// while another, which took it from nobody without a lease wait, did too.
func TestGiveUpRelinquishes(t *testing.T) {
	s := New("n1", ttl, 0)
	s.Renewed(0, 0)
	s.Claimed("b", 3, s.Gen())
	mine := repo.FS{Name: "b", Owner: "n1", Epoch: 3}
	live := map[string]bool{"n1": true, "n2": true, "n3": true}
	s.Quorum(time.Second, leases("n1", "n2", "n3"), func(string) bool { return false })
	s.Renewed(ttl, ttl)
	s.Quorum(ttl+time.Second, leases("n1", "n2", "n3"), func(string) bool { return false })
	if k := kinds(s.Plan(view(ttl+time.Second, []repo.FS{mine}, false, live, nil, map[string]uint64{"b": 3}))); len(k) != 1 || k[0] != GiveUp {
		t.Fatalf("a whole lease in a minority: %v", k)
	}
	// Back in the majority before the Move landed: the repository still
	// says n1 at epoch 3.
	s.Renewed(ttl+2*time.Second, ttl+2*time.Second)
	s.Quorum(ttl+2*time.Second, leases("n1", "n2", "n3"), func(string) bool { return true })
	if k := kinds(s.Plan(view(ttl+2*time.Second, []repo.FS{mine}, true, live, nil, nil))); len(k) != 1 || k[0] != ClaimEpoch {
		t.Fatalf("after giving it up, the plan for the old epoch is %v, want a fresh claim", k)
	}
}

func TestWatchdog(t *testing.T) {
	var w Watchdog
	if v := w.Session("a", false); v != Fine {
		t.Fatalf("a session not stuck: %v", v)
	}
	if v := w.Session("a", true); v != Restart {
		t.Fatalf("stuck once: %v", v)
	}
	if v := w.Session("a", true); v != GiveItUp {
		t.Fatalf("stuck again after the restart: %v", v)
	}
	w.Session("a", true)
	if v := w.Session("a", false); v != Fine {
		t.Fatalf("recovered: %v", v)
	}
	if v := w.Session("a", true); v != Restart {
		t.Fatalf("stuck after a recovery restarts again first: %v", v)
	}
	if v := w.Mount("a", "fuse died", true, true); v != Remount {
		t.Fatalf("FUSE died once: %v", v)
	}
	if v := w.Mount("a", "fuse died", true, true); v != GiveItUp {
		t.Fatalf("FUSE died again, owned: %v", v)
	}
	if v := w.Mount("b", "backing gone", false, false); v != Fine {
		t.Fatalf("unhealthy, not owned: %v", v)
	}
	if v := w.Mount("b", "backing gone", false, true); v != GiveItUp {
		t.Fatalf("unhealthy, owned: %v", v)
	}
}

func TestVoteOrder(t *testing.T) {
	a := Ballot{Node: "n2", Key: 1.5}
	b := Ballot{Node: "n1", Key: 1.5}
	c := Ballot{Node: "n3", Key: 2}
	if !Better(c, a) || Better(a, c) || !Better(b, a) || Better(a, b) {
		t.Fatal("ballots not ordered by key, then name")
	}
}
