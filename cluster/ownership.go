package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/clock"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/repo"
)

// Ownership: the decisions and the lease state are in package owner
// (one type, no I/O, run under the simulator); this file carries them
// out: renewals, the lapse timer, claims, moves and the fence that every
// commit passes.

// now is this node's clock for its lease: the boot clock, which runs on
// while the host is suspended.
func now() time.Duration { return clock.Boot() }

// renewLease renews the lease; the validity counts from before the call.
func (n *Node) renewLease() error {
	sent := now()
	if err := failpoint.Hit(failpoint.LeaseRenew); err != nil {
		return err
	}
	if err := n.repo.Renew(n.ctx, n.cfg.Name, n.cfg.Lease); err != nil {
		return err
	}
	left := n.own.Renewed(sent, now())
	// Not left to the renewal loop, which may be stuck in a call to an
	// unreachable repository when the lease runs out.
	n.lapseMu.Lock()
	if n.lapse == nil {
		n.lapse = time.AfterFunc(left, n.onLapseTimer)
	} else {
		n.lapse.Reset(left)
	}
	n.lapseMu.Unlock()
	return nil
}

// onLapseTimer runs when the lease would run out without a renewal.
func (n *Node) onLapseTimer() {
	if n.own.NoteLapse(now()) && n.ctx.Err() == nil {
		n.selfFence("lease lapsed")
	}
}

// leaseValid: this node may act for what it owns.
func (n *Node) leaseValid() bool { return n.own.Valid(now()) }

// leaseLoop renews the lease four times per TTL. When the lease lapsed
// (the repository unreachable, or this process paused), it stops every
// session before it renews again: what ran across the lapse may have been
// taken over meanwhile, and the sessions start again only at a new epoch
// once the reconcile loop sees this node still owns them.
func (n *Node) leaseLoop() { n.every(n.cfg.Lease/4, nil, n.leaseTick) }

func (n *Node) leaseTick() {
	lapsed := n.own.NoteLapse(now())
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

// actingIn fails once this node may no longer act for a session bound to
// lapse count gen.
func (n *Node) actingIn(gen uint64) error {
	if err := n.own.Acting(now(), gen); err != nil {
		n.kick()
		return fmt.Errorf("%w: %v", dmapi.ErrFenced, err)
	}
	return nil
}

// selfFence stops every session this node runs. Commits stopped already
// (the lapse count moved on); the sessions are stopped outside n.mu, which
// a slow reconcile may hold.
func (n *Node) selfFence(why string) {
	n.mu.Lock()
	all := slices.Collect(maps.Values(n.fss))
	n.mu.Unlock()
	for _, m := range all {
		if m.currentDM() != nil {
			n.log.Error("self-fenced: stopping the session", "fs", m.name, "reason", why)
			m.stopDM(why)
		}
	}
}

// quorum asks the repository for the leases and judges the quorum (see
// owner.State.Quorum).
func (n *Node) quorum() (bool, string, map[string]bool) {
	leases, err := n.repo.Leases(n.ctx)
	if err != nil {
		return false, "repository unreadable: " + err.Error(), nil
	}
	return n.own.Quorum(now(), leases, n.alive)
}

// claim makes this node the owner of fs at its next epoch, from its owner
// from ("" or this node: no lease wait), and notes the epoch; nil when
// another node got it first.
func (n *Node) claim(fs, from, reason string) (*repo.FS, error) {
	if !n.leaseValid() {
		return nil, errors.New("this node's lease is not valid")
	}
	gen := n.own.Gen()
	got, err := n.repo.Claim(n.ctx, fs, n.cfg.Name, from, reason)
	if errors.Is(err, repo.ErrOwnerChanged) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n.own.Claimed(got.Name, got.Epoch, gen)
	return &got, nil
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
		if why := n.own.MayTake(now(), ok, why); why != "" {
			n.log.Warn("failover: not taking filesystem", "fs", name, "from", failed, "because", why)
			return
		}
		if err := failpoint.Hit(failpoint.TakeoverBeforeCommit); err != nil {
			n.log.Warn("failover: attempt failed", "fs", name, "reason", err)
			return
		}
		fs, err := n.claim(name, failed, reason)
		switch {
		case err == nil && fs == nil:
			n.log.Info("failover: already taken", "fs", name)
			return
		case err == nil:
			n.log.Info("took over filesystem", "fs", name, "from", failed, "epoch", fs.Epoch, "reason", reason)
			n.metrics.Add(metrics.Takeovers, 1, "fs", name)
			n.startOwned(*fs)
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
	fs, err := n.repo.GetFS(context.Background(), name)
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
	n.own.Relinquish(name, epoch) // never served again at that epoch here
	_, err := n.repo.Move(context.Background(), name, n.cfg.Name, epoch, to, reason)
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
		if err := n.repo.Confirm(context.Background(), m.name, n.cfg.Name, epoch); err != nil {
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
