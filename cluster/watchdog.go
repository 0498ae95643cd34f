package cluster

import (
	"fmt"
	"os"
	"time"

	"github.com/cascadefs/cascadefs/cluster/owner"
)

// The watchdog (the patent's dsmwatchd) checks, every second, that this
// node can still serve each filesystem it mounts: its backing directory
// answers and its FUSE server runs. A dead FUSE server is restarted once;
// a filesystem this node owns but can no longer serve is given up with an
// active failover request (a Serf user event), so that the other
// candidates take it at once instead of waiting for failure detection.

const watchEvery = time.Second

// userEventFailover is the Serf user event of an active failover request;
// its payload is the name of the node that gives its filesystems up.
const userEventFailover = "cascadefs-failover"

func (n *Node) watchdog() {
	defer n.wg.Done()
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	var w owner.Watchdog // restart once, then give up
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		var all []*mounted
		for _, m := range n.fss {
			all = append(all, m)
		}
		n.mu.Unlock()
		for _, m := range all {
			if dm := m.currentDM(); dm != nil {
				switch w.Session(m.name, dm.Stuck(n.cfg.StuckAfter)) {
				case owner.Restart:
					n.log.Warn("watchdog: DM workers or space monitor stuck; restarting the session once", "fs", m.name, "after", n.cfg.StuckAfter.String())
					m.stopDM("workers or space monitor stuck")
					n.kick() // the reconcile loop starts it again
					continue
				case owner.GiveItUp:
					n.giveUp(m, "its DM workers or space monitor stay stuck after a restart")
					continue
				}
			}
			why := m.unhealthy()
			switch w.Mount(m.name, why, why == fuseDied, m.currentDM() != nil) {
			case owner.Remount:
				n.log.Warn("watchdog: FUSE server died; remounting once", "fs", m.name)
				n.remount(m)
			case owner.GiveItUp:
				n.giveUp(m, why)
			}
		}
	}
}

const fuseDied = "its FUSE server is not running"

// giveUpCooldown: a node does not take back what it gave up for this long.
const giveUpCooldown = time.Minute

// unhealthy says why this node cannot serve the filesystem now ("" if it can).
func (m *mounted) unhealthy() string {
	if !m.mount.FS().Serving() {
		return fuseDied
	}
	if st, err := os.Stat(m.config().Backing); err != nil || !st.IsDir() {
		return fmt.Sprintf("its backing directory %s is unusable", m.config().Backing)
	}
	return ""
}

// remount replaces a mount whose FUSE server died.
func (n *Node) remount(m *mounted) {
	owned := m.currentDM() != nil
	m.stopDM("remounting")
	m.mount.Stop()
	m.changes.stop()
	n.mu.Lock()
	delete(n.fss, m.name)
	n.mu.Unlock()
	if owned {
		n.log.Info("watchdog: filesystem will be served again after the remount", "fs", m.name)
	}
	n.kick() // the reconcile loop mounts it again and restarts its session
}

// giveUp stops serving an owned filesystem, leaves it without owner and
// asks the others to take it.
func (n *Node) giveUp(m *mounted, why string) {
	n.log.Error("watchdog: cannot serve the filesystem any more; active failover", "fs", m.name, "reason", why)
	n.mu.Lock()
	n.gaveUp[m.name] = time.Now()
	n.mu.Unlock()
	m.stopDM("cannot serve: " + why)
	m.handOver(n.cfg.Name + " cannot serve it: " + why)
	payload := []byte(n.cfg.Name)
	if err := n.member.Serf().UserEvent(userEventFailover, payload, false); err != nil {
		n.log.Error("active failover request not sent; the others will see the filesystem as unserved", "reason", err)
	}
}
