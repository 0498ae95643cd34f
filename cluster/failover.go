package cluster

import (
	"errors"
	"fmt"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/cascadefs/cascadefs/metrics"
)

// A failover request asks this node to take what a failed node owned. They
// queue FIFO and are handled one at a time; a request for a node that owns
// nothing any more is a no-op.
type failoverReq struct {
	node   string // the node that failed
	reason string
}

// requestFailover queues a request unless one for the same node waits.
func (n *Node) requestFailover(node, reason string) {
	n.failMu.Lock()
	defer n.failMu.Unlock()
	for _, r := range n.failQueue {
		if r.node == node {
			return
		}
	}
	n.failQueue = append(n.failQueue, failoverReq{node: node, reason: reason})
	select {
	case n.failWake <- struct{}{}:
	default:
	}
}

// failoverLoop handles the queued requests in order.
func (n *Node) failoverLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.failWake:
		}
		for {
			n.failMu.Lock()
			if len(n.failQueue) == 0 {
				n.failMu.Unlock()
				break
			}
			req := n.failQueue[0]
			n.failMu.Unlock()
			n.handleFailover(req)
			n.failMu.Lock()
			n.failQueue = n.failQueue[1:]
			n.failMu.Unlock()
		}
	}
}

// onMember turns membership news into failover requests.
func (n *Node) onMember(name string, st member.Status) {
	if name == n.cfg.Name {
		return
	}
	switch st {
	case member.Failed:
		n.requestFailover(name, "node "+name+" failed")
	case member.Left:
		n.requestFailover(name, "node "+name+" left")
	}
}

// handleFailover takes, filesystem by filesystem, what the failed node
// owned and this node can serve; the others stay for the next candidate.
func (n *Node) handleFailover(req failoverReq) {
	list, err := n.repo.ListFS()
	if err != nil {
		n.log.Warn("failover: repository unreadable", "failed", req.node, "reason", err)
		return
	}
	owned := 0
	defer func() {
		if owned == 0 {
			n.log.Info("failover: nothing left to take", "from", req.node, "reason", req.reason)
		}
	}()
	for _, fs := range list {
		if fs.Owner != req.node {
			continue
		}
		owned++
		if why := n.ineligible(fs); why != "" {
			if n.declined[fs.Name] != why { // said once per reason, not at every retry
				n.log.Info("failover: not taking filesystem", "fs", fs.Name, "from", req.node, "because", why)
				n.declined[fs.Name] = why
			}
			continue
		}
		delete(n.declined, fs.Name)
		if fs.Settings["failover"] == "sync" {
			n.takeOverSync(fs, req.node, req.reason)
			continue
		}
		n.takeOver(fs.Name, req.node, req.reason)
	}
}

// ineligible says why this node cannot serve a filesystem now ("" if it can).
func (n *Node) ineligible(fs repo.FS) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ineligibleLocked(fs)
}

// ineligibleLocked is ineligible with n.mu held.
func (n *Node) ineligibleLocked(fs repo.FS) string {
	if !fs.IsCandidate(n.cfg.Name) {
		return "not a candidate"
	}
	m := n.fss[fs.Name]
	if m == nil {
		return "not mounted here"
	}
	if why := m.unhealthy(); why != "" {
		return why
	}
	if t, ok := n.gaveUp[fs.Name]; ok && time.Since(t) < giveUpCooldown {
		return "gave it up " + time.Since(t).Round(time.Second).String() + " ago"
	}
	if max := n.cfg.MaxFilesystems; max > 0 && n.ownedCountLocked() >= max {
		return fmt.Sprintf("serves %d filesystem(s) already (max-filesystems)", max)
	}
	return ""
}

func (n *Node) ownedCountLocked() int {
	c := 0
	for _, m := range n.fss {
		if m.currentDM() != nil {
			c++
		}
	}
	return c
}

// errMoved: the filesystem's owner is no longer the failed node.
var errMoved = errors.New("owner changed")

// takeOver races the other candidates for the filesystem's lock; the
// winner checks the owner is still the failed node, makes itself owner at
// epoch+1 and starts the session. A lock whose holder died is taken by
// force once older than the lock timeout.
func (n *Node) takeOver(name, failed, reason string) {
	lock := "fs/" + name
	for n.ctx.Err() == nil {
		fs, err := n.repo.GetFS(name)
		if err != nil {
			n.log.Warn("failover: repository unreadable", "fs", name, "reason", err)
		} else if fs.Owner != failed {
			n.log.Info("failover: already taken", "fs", name, "owner", fs.Owner, "epoch", fs.Epoch)
			return
		} else if ok, err := n.repo.TryLock(lock, n.cfg.Name, n.cfg.LockTimeout); err == nil && ok {
			if err := failpoint.Hit(failpoint.TakeoverBeforeCommit); err != nil {
				n.repo.Unlock(lock, n.cfg.Name)
				n.log.Warn("failover: attempt failed", "fs", name, "reason", err)
				return
			}
			err := n.repo.UpdateFS(name, func(f *repo.FS) error {
				if f.Owner != failed {
					return errMoved
				}
				f.SetOwner(n.cfg.Name, reason)
				fs = *f
				return nil
			})
			n.repo.Unlock(lock, n.cfg.Name)
			if errors.Is(err, errMoved) {
				n.log.Info("failover: owner changed meanwhile; dropping the attempt", "fs", name)
				return
			}
			if err == nil {
				n.log.Info("took over filesystem", "fs", name, "from", failed, "epoch", fs.Epoch, "reason", reason)
				n.metrics.Add(metrics.Takeovers, 1, "fs", name)
				n.startOwned(fs)
				return
			}
			n.log.Warn("failover: update failed", "fs", name, "reason", err)
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startOwned starts the session of a filesystem this node now owns; if it
// cannot, it gives the filesystem up so that the next candidate takes it.
func (n *Node) startOwned(fs repo.FS) {
	m := n.lookup(fs.Name)
	if m != nil {
		m.setConf(fs)
		if err := m.ensureDM(fs); err == nil {
			return
		} else {
			n.log.Error("cannot serve the filesystem taken over; giving it up", "fs", fs.Name, "reason", err)
		}
	}
	n.repo.UpdateFS(fs.Name, func(f *repo.FS) error {
		if f.Owner == n.cfg.Name && f.Epoch == fs.Epoch {
			f.Takeovers = append(f.Takeovers, repo.Takeover{At: time.Now(), From: f.Owner, Epoch: f.Epoch, Reason: "given up: " + n.cfg.Name + " cannot serve it"})
			f.Owner = ""
		}
		return nil
	})
}
