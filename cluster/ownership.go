package cluster

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/repo"
)

// Ownership, all in one place: this node's lease, every change of a
// filesystem's owner (take one without owner, take over from a node whose
// lease lapsed, hand over, give up, move by hand) and the fence that every
// commit passes. The rules:
//
//   - A node acts for a filesystem (commits, recalls) only while its lease
//     is valid by its own monotonic clock: renewed less than the lease TTL
//     minus a margin ago, measured from when the renewal was sent. The
//     others judge the lease lapsed only after a whole TTL by their own
//     clocks, so the owner has stopped before anybody takes over.
//   - A filesystem is taken from its owner only once the owner's lease
//     lapsed (repo.Claim checks it), never because gossip says it failed:
//     gossip only makes the others look sooner.
//   - A node that sees fewer than half of the nodes holding live leases
//     (itself included; a tie goes to the half with the smallest name)
//     gives its filesystems up and takes none: a cut-off owner that still
//     reaches the repository must not keep what nobody can reach it for.
//   - Every process takes a fresh epoch for what it owns, even one its
//     previous incarnation owned: a paused old process of the same name is
//     fenced by the epoch. So does a process after each lapse of its
//     lease, and a session serves within one lapse count: what a session
//     started before a lapse commits nothing, even once the lease is
//     renewed (the count is read without any lock that I/O holds).

// DefaultLease is the lease TTL when none is set.
const DefaultLease = 5 * time.Second

// leaseKeeper renews this node's lease and knows until when it may act.
type leaseKeeper struct {
	mu    sync.Mutex
	until time.Time   // by the monotonic clock; zero before the first renewal
	lapse *time.Timer // stops the sessions at until, should no renewal come first
	// lapses counts the lapses of this process's lease (changed under mu,
	// read without it). A session is bound to the count at the claim of
	// its epoch; its commits are refused once the count moved on.
	lapses atomic.Uint64
	noted  bool // this lapse is counted (until the next renewal)
}

// leaseMargin: how long before the TTL's end a node stops acting, for
// clocks that run at slightly different rates and for the time a commit
// takes after its check.
func (n *Node) leaseMargin() time.Duration { return max(n.cfg.Lease/5, 100*time.Millisecond) }

// renewLease renews the lease; the validity counts from before the call.
func (n *Node) renewLease() error {
	sent := time.Now()
	if err := failpoint.Hit(failpoint.LeaseRenew); err != nil {
		return err
	}
	if err := n.repo.Renew(n.cfg.Name, n.cfg.Lease); err != nil {
		return err
	}
	n.lease.mu.Lock()
	n.lease.until = sent.Add(n.cfg.Lease - n.leaseMargin())
	if time.Now().Before(n.lease.until) {
		n.lease.noted = false
	}
	// Not left to the renewal loop, which may be stuck in a call to an
	// unreachable repository when the lease runs out.
	if n.lease.lapse == nil {
		n.lease.lapse = time.AfterFunc(time.Until(n.lease.until), func() {
			if n.noteLapse() && n.ctx.Err() == nil {
				n.selfFence("lease lapsed")
			}
		})
	} else {
		n.lease.lapse.Reset(time.Until(n.lease.until))
	}
	n.lease.mu.Unlock()
	return nil
}

// leaseValid: this node may act for what it owns.
func (n *Node) leaseValid() bool {
	n.lease.mu.Lock()
	defer n.lease.mu.Unlock()
	return time.Now().Before(n.lease.until)
}

// noteLapse counts a lapse of the lease, once per lapse, and reports
// whether the lease has lapsed.
func (n *Node) noteLapse() bool {
	n.lease.mu.Lock()
	defer n.lease.mu.Unlock()
	if time.Now().Before(n.lease.until) {
		return false
	}
	if !n.lease.noted {
		n.lease.noted = true
		n.lease.lapses.Add(1)
	}
	return true
}

// leaseLoop renews the lease four times per TTL. When the lease lapsed
// (the repository unreachable, or this process paused), it stops every
// session before it renews again: what ran across the lapse may have been
// taken over meanwhile, and the sessions start again only after the
// reconcile loop sees this node still owns them.
func (n *Node) leaseLoop() { n.every(n.cfg.Lease/4, nil, n.leaseTick) }

func (n *Node) leaseTick() {
	lapsed := n.noteLapse()
	if lapsed {
		n.selfFence("lease lapsed")
	}
	if err := n.renewLease(); err != nil {
		n.log.Warn("lease not renewed", "reason", err, "valid", n.leaseValid())
		return
	}
	n.quorum() // sightings of the others' leases (a prompt takeover), and the minority clock
	if lapsed {
		n.log.Info("lease renewed after a lapse")
		n.kick()
	}
}

// acting fails once this node may no longer act for what it owns.
func (n *Node) acting() error {
	if n.noteLapse() {
		n.kick()
		return fmt.Errorf("%w (this node's lease lapsed)", dmapi.ErrFenced)
	}
	return nil
}

// actingIn is acting for a session bound to lapse count gen: it fails
// for good once the lease lapsed after the session's epoch was claimed.
func (n *Node) actingIn(gen uint64) error {
	if err := n.acting(); err != nil {
		return err
	}
	if n.lease.lapses.Load() != gen {
		return fmt.Errorf("%w (this node's lease lapsed since the session started)", dmapi.ErrFenced)
	}
	return nil
}

// selfFence stops every session this node runs.
func (n *Node) selfFence(why string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.fss {
		if m.currentDM() != nil {
			n.log.Error("self-fenced: stopping the session", "fs", m.name, "reason", why)
			m.stopDM(why)
		}
	}
}

// quorum reports whether this node sees at least half of the nodes that
// hold live leases (itself included); a tie goes to the half that holds
// the smallest name. It says why not, and which leases are live. It is
// looked at four times per lease (leaseTick) and at each reconcile, and
// notes since when the answer has been no: gossip calls a busy or just
// woken peer failed for a moment, and such a moment must not move a
// filesystem, while a cut-off node stays in its minority.
func (n *Node) quorum() (bool, string, map[string]bool) {
	ok, why, live := n.judgeQuorum()
	n.lease.mu.Lock()
	switch {
	case ok:
		n.minoritySince = time.Time{}
	case n.minoritySince.IsZero():
		n.minoritySince = time.Now()
	}
	n.lease.mu.Unlock()
	return ok, why, live
}

// minorityFor: how long every look found this node in a minority.
func (n *Node) minorityFor() time.Duration {
	n.lease.mu.Lock()
	defer n.lease.mu.Unlock()
	if n.minoritySince.IsZero() {
		return 0
	}
	return time.Since(n.minoritySince)
}

func (n *Node) judgeQuorum() (bool, string, map[string]bool) {
	leases, err := n.repo.Leases()
	if err != nil {
		return false, "repository unreadable: " + err.Error(), nil
	}
	liveSet := map[string]bool{n.cfg.Name: true}
	live := []string{n.cfg.Name}
	for _, l := range leases {
		if l.Live && l.Node != n.cfg.Name {
			live = append(live, l.Node)
			liveSet[l.Node] = true
		}
	}
	slices.Sort(live)
	seen := 0
	for _, name := range live {
		if name == n.cfg.Name || n.alive(name) {
			seen++
		}
	}
	switch {
	case 2*seen > len(live):
		return true, "", liveSet
	case 2*seen == len(live) && (live[0] == n.cfg.Name || n.alive(live[0])):
		return true, "", liveSet
	}
	return false, fmt.Sprintf("sees %d of the %d nodes with live leases", seen, len(live)), liveSet
}

// take makes this node the owner of a filesystem nobody owns; it returns
// the new record, or nil if another node won.
func (n *Node) take(name string) (*repo.FS, error) {
	if !n.leaseValid() {
		return nil, errors.New("this node's lease is not valid")
	}
	fs, err := n.repo.Claim(name, n.cfg.Name, "", "had no owner")
	if errors.Is(err, repo.ErrOwnerChanged) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n.claimed(fs)
	n.log.Info("took filesystem", "fs", name, "epoch", fs.Epoch)
	return &fs, nil
}

// renewEpoch gives a filesystem this node owns a fresh epoch when this
// process has not claimed it since its lease last lapsed (or at all: it
// was owned by an earlier incarnation).
func (n *Node) renewEpoch(fs repo.FS) (repo.FS, error) {
	if _, mine := n.claimedIn(fs); mine {
		return fs, nil
	}
	if !n.leaseValid() {
		return fs, errors.New("this node's lease is not valid")
	}
	fs, err := n.repo.Claim(fs.Name, n.cfg.Name, n.cfg.Name, "a new epoch for this process of "+n.cfg.Name)
	if err != nil {
		return fs, err
	}
	n.claimed(fs)
	return fs, nil
}

// claimed notes an epoch this process got, and the lapse count then:
// the session that serves it is bound to that count.
func (n *Node) claimed(fs repo.FS) {
	n.epochMu.Lock()
	n.epochs[fs.Name] = claim{epoch: fs.Epoch, gen: n.lease.lapses.Load()}
	n.epochMu.Unlock()
}

// claim is an epoch this process claimed, and the lapse count then.
type claim struct {
	epoch, gen uint64
}

// claimedIn gives the lapse count of fs's epoch if this process claimed
// it and the lease has not lapsed since.
func (n *Node) claimedIn(fs repo.FS) (gen uint64, ok bool) {
	n.epochMu.Lock()
	c, ok := n.epochs[fs.Name]
	n.epochMu.Unlock()
	return c.gen, ok && c.epoch == fs.Epoch && c.gen == n.lease.lapses.Load()
}

// takeOver takes a filesystem from a failed owner once the owner's lease
// lapsed, unless another node takes it first. It tries for a few lease
// TTLs: an owner whose lease stays live is not failed, whatever gossip
// says (the reconcile loop asks again if its lease lapses later).
func (n *Node) takeOver(name, failed, reason string) {
	giveUpAt := time.Now().Add(3*n.cfg.Lease + time.Second)
	said := false
	for n.ctx.Err() == nil {
		ok, why, _ := n.quorum()
		if ok && !n.leaseValid() {
			ok, why = false, "this node's lease is not valid"
		}
		if !ok {
			n.log.Warn("failover: not taking filesystem", "fs", name, "from", failed, "because", why)
			return
		}
		if err := failpoint.Hit(failpoint.TakeoverBeforeCommit); err != nil {
			n.log.Warn("failover: attempt failed", "fs", name, "reason", err)
			return
		}
		fs, err := n.repo.Claim(name, n.cfg.Name, failed, reason)
		switch {
		case err == nil:
			n.claimed(fs)
			n.log.Info("took over filesystem", "fs", name, "from", failed, "epoch", fs.Epoch, "reason", reason)
			n.metrics.Add(metrics.Takeovers, 1, "fs", name)
			n.startOwned(fs)
			return
		case errors.Is(err, repo.ErrOwnerChanged):
			n.log.Info("failover: already taken", "fs", name, "reason", err)
			return
		case errors.Is(err, repo.ErrLeaseLive):
			if !said {
				n.log.Info("failover: waiting for the owner's lease to lapse", "fs", name, "owner", failed)
				said = true
			}
			if time.Now().After(giveUpAt) {
				n.log.Warn("failover: the owner's lease stays live; not taking it", "fs", name, "owner", failed)
				return
			}
		default:
			n.log.Warn("failover: repository unreadable", "fs", name, "reason", err)
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(max(n.cfg.Lease/20, 10*time.Millisecond)):
		}
	}
}

// startOwned starts the session of a filesystem this node now owns; if it
// cannot, it gives the filesystem up so that the next candidate takes it.
func (n *Node) startOwned(fs repo.FS) {
	m := n.lookup(fs.Name)
	if m != nil {
		m.setConf(fs)
		err := m.ensureDM(fs)
		if err == nil {
			return
		}
		if errors.Is(err, errLapsedSinceClaim) {
			n.log.Warn("DM session not started: the lease lapsed meanwhile", "fs", fs.Name)
			n.kick() // the reconcile loop claims a new epoch
			return
		}
		n.log.Error("cannot serve the filesystem taken over; giving it up", "fs", fs.Name, "reason", err)
	}
	n.move(fs.Name, fs.Epoch, "", "given up: "+n.cfg.Name+" cannot serve it")
}

// handOverByName leaves a filesystem this node owns without owner (once
// its session stopped, so that its events go elsewhere) and wakes the
// other nodes to take it.
func (n *Node) handOverByName(name, why string) {
	if err := failpoint.Hit(failpoint.HandoverAfterStop); err != nil {
		n.log.Warn("could not hand the filesystem over", "fs", name, "reason", err)
		return
	}
	fs, err := n.repo.GetFS(name)
	if err != nil {
		n.log.Warn("could not hand the filesystem over", "fs", name, "reason", err)
		return
	}
	if fs.Owner != n.cfg.Name {
		return
	}
	if err := n.move(name, fs.Epoch, "", "handed over: "+why); err != nil {
		return
	}
	n.fanout(n.peers(fs), pathWake, struct{}{}, time.Second, "wake-up for the handover not delivered")
}

// move gives a filesystem this node owns at epoch to another node, or to
// none.
func (n *Node) move(name string, epoch uint64, to, reason string) error {
	_, err := n.repo.Move(name, n.cfg.Name, epoch, to, reason)
	switch {
	case err == nil:
		n.log.Info("filesystem handed over", "fs", name, "to", to, "reason", reason)
	case errors.Is(err, repo.ErrOwnerChanged):
		n.log.Info("filesystem not handed over: not ours any more", "fs", name, "reason", err)
	default:
		n.log.Warn("could not hand the filesystem over", "fs", name, "reason", err)
	}
	return err
}

// fence lets a commit through only while this node's lease is valid and
// the repository confirms it owns the filesystem at epoch. It holds no
// lock across the commit: a takeover waits for the lease to lapse, which
// comes after the margin, and the file's own commit lock (stub.LockCommit)
// keeps other nodes off the file while the commit changes it. A replaced
// node commits nothing and stops its session.
func (m *mounted) fence(epoch, gen uint64) dmapi.Fence {
	return func(commit func() error) error {
		n := m.n
		if err := n.actingIn(gen); err != nil {
			return err
		}
		if err := n.repo.Confirm(m.name, n.cfg.Name, epoch); err != nil {
			if !errors.Is(err, repo.ErrOwnerChanged) {
				return err
			}
			n.log.Warn("fenced: replaced, commit refused; stopping the session", "fs", m.name, "reason", err)
			n.kick() // the reconcile loop stops the session (not from inside it)
			return fmt.Errorf("%w: %v", dmapi.ErrFenced, err)
		}
		// Again: the lease may have lapsed while the repository answered.
		if err := n.actingIn(gen); err != nil {
			return err
		}
		return commit()
	}
}
