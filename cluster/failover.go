package cluster

import (
	"fmt"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/repo"
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
	list, err := n.repo.ListFS(n.ctx)
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
		if m := n.lookup(fs.Name); m != nil && m.settings().Failover == "sync" {
			n.takeOverSync(fs, req.node, req.reason)
			continue
		}
		n.takeOver(fs.Name, req.node, req.reason)
	}
}

// ineligible says why this node cannot serve a filesystem now ("" if it
// can). The look at the backing directory is made outside n.mu: a
// stalled disk must not hold the node's lock.
func (n *Node) ineligible(fs repo.FS) string {
	if !fs.IsCandidate(n.cfg.Name) {
		return "not a candidate"
	}
	n.mu.Lock()
	m := n.fss[fs.Name]
	gaveUp, cooling := n.gaveUp[fs.Name]
	owned := n.ownedCountLocked()
	n.mu.Unlock()
	if m == nil {
		return "not mounted here"
	}
	if why := m.unhealthy(); why != "" {
		return why
	}
	if cooling && time.Since(gaveUp) < giveUpCooldown {
		return "gave it up " + time.Since(gaveUp).Round(time.Second).String() + " ago"
	}
	if max := n.cfg.MaxFilesystems; max > 0 && owned >= max {
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
