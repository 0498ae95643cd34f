package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/dmapi"
)

// clusterGate is the migrate.Gate of an owned filesystem: a release needs
// every node that mounts the filesystem to confirm the file is closed there
// and to hold new opens until the punch is done. A node that cannot be
// asked makes the release give up (the file stays premigrated), never
// proceed.
type clusterGate struct {
	n *Node
	m *mounted
}

func (g *clusterGate) Commit(ino uint64, fn func() error) error {
	return g.m.mount.FS().Commit(ino, fn)
}

// CommitCopy: writers on other nodes are not asked; what they change
// removes the file's watch (stub.Unwatch), which the commit checks.
func (g *clusterGate) CommitCopy(ino uint64, fn func() error) error {
	return g.m.mount.FS().CommitCopy(ino, fn)
}

func (g *clusterGate) Release(ctx context.Context, ino uint64, wait time.Duration, fn func(confirm func() error) error) error {
	peers := g.n.peers(g.m.config())
	for _, p := range peers {
		if p.Status != member.Alive {
			return fmt.Errorf("node %s is %s and cannot confirm the file is closed there: %w", p.Name, p.Status, dmapi.ErrPeerDown)
		}
	}
	var tb [12]byte
	rand.Read(tb[:])
	token := hex.EncodeToString(tb[:])
	// Each hold ends by itself hold-lease after its node granted it: the
	// punch must come before the first could end, counted from before the
	// first call by this node's clock, with a margin. The waits for open
	// handles (one per node) must leave room for it.
	lease := min(max(g.m.settings().HoldLease, minHoldLease), maxHoldLease)
	holdsUntil := time.Now().Add(lease - max(lease/10, 200*time.Millisecond))
	wait = min(wait, lease/time.Duration(2*(len(peers)+1)))
	var held []member.Info
	defer func() { g.n.unholdAll(held, g.m.name, token) }()
	for _, p := range peers {
		req := holdReq{FS: g.m.name, Ino: ino, Token: token, WaitMs: wait.Milliseconds(), LeaseMs: lease.Milliseconds()}
		if err := g.n.client.Call(ctx, p.Name, p.RPC, pathHold, req, nil); err != nil {
			return fmt.Errorf("node %s: %v: %w", p.Name, err, dmapi.ErrBusy)
		}
		held = append(held, p)
	}
	err := g.m.mount.FS().Release(ctx, ino, wait, func(func() error) error {
		// Confirmed just before the punch: a release that took longer (a
		// pause, a slow disk, a slow archive) would punch a file that a
		// node whose hold ended may have opened by passthrough.
		return fn(func() error {
			if len(held) > 0 && !time.Now().Before(holdsUntil) {
				return fmt.Errorf("the other nodes' holds may have ended (hold-lease %s): %w", lease, dmapi.ErrBusy)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	// Their cached attributes (allocated blocks) are stale now.
	g.n.fanout(held, pathInvalidate, invalidateReq{FS: g.m.name, Ino: ino}, 2*time.Second, "cache invalidation not delivered")
	return nil
}

// fanout calls path on every peer at once, each bounded by timeout, and
// logs what did not get through.
func (n *Node) fanout(peers []member.Info, path string, req any, timeout time.Duration, what string) {
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if err := n.client.Call(ctx, p.Name, p.RPC, path, req, nil); err != nil {
				n.log.Warn(what, "peer", p.Name, "reason", err)
			}
		}()
	}
	wg.Wait()
}

func (n *Node) unholdAll(peers []member.Info, fs, token string) {
	n.fanout(peers, pathUnhold, holdReq{FS: fs, Token: token}, 5*time.Second, "unhold failed; the hold ends with its lease")
}

// invalidatePeers tells the other nodes that mount fs to drop their cached
// pages and attributes of a file changed here, before close returns.
func (n *Node) invalidatePeers(fs string, ino uint64) {
	n.sendChanges(fs, invalidateReq{FS: fs, Ino: ino})
}

func (n *Node) sendChanges(fs string, req invalidateReq) {
	m := n.lookup(fs)
	if m == nil {
		return
	}
	var alive []member.Info
	for _, p := range n.peers(m.config()) {
		if p.Status == member.Alive {
			alive = append(alive, p)
		}
	}
	n.fanout(alive, pathInvalidate, req, 2*time.Second, "cache invalidation not delivered")
}

// holds are this node's holds for other nodes' releases, by token, each
// ended by an unhold or by its lease.
type holds struct {
	mu sync.Mutex
	m  map[string][]func()
}

func (h *holds) add(token string, unhold func(), lease time.Duration) {
	h.mu.Lock()
	if h.m == nil {
		h.m = map[string][]func(){}
	}
	h.m[token] = append(h.m[token], unhold)
	h.mu.Unlock()
	time.AfterFunc(lease, func() { h.release(token) })
}

func (h *holds) release(token string) {
	h.mu.Lock()
	fns := h.m[token]
	delete(h.m, token)
	h.mu.Unlock()
	for _, f := range fns {
		f()
	}
}
