package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/repo"
)

// Moving a filesystem by hand (`cascadefs failover NAME --to NODE`): the
// target checks it is eligible, then the current owner stops its session
// and hands the filesystem to the target at epoch+1; an owner that does not
// answer is taken over as a failed one (the same lock and checks).

// Expel takes a failed node out of the cluster by an admin's word that it
// is down (powered off, or its processes killed), as GPFS's mmexpelnode:
// releases stop waiting for it to confirm its files are closed. A node
// that is alive or only suspect is refused.
func (n *Node) Expel(name string) error {
	if name == n.cfg.Name {
		return fmt.Errorf("%s cannot expel itself", name)
	}
	i, ok := n.member.Lookup(name)
	switch {
	case !ok:
		return fmt.Errorf("no node %s in the cluster", name)
	case i.Status == member.Left:
		return nil
	case i.Status != member.Failed:
		return fmt.Errorf("node %s is %s: only a failed node can be expelled", name, i.Status)
	}
	if err := n.member.ForceLeave(name); err != nil {
		return fmt.Errorf("expel %s: %w", name, err)
	}
	n.log.Warn("node expelled by an admin: releases no longer wait for it", "expelled", name)
	return nil
}

type moveReq struct {
	FS     string `json:"fs"`
	To     string `json:"to"`
	Reason string `json:"reason"`
}

type moveReply struct {
	Owner string `json:"owner"`
	Epoch uint64 `json:"epoch"`
}

// Move asks node to (to) to take filesystem fs; it returns the new owner
// and epoch.
func (n *Node) Move(ctx context.Context, fs, to string) (moveReply, error) {
	f, err := n.repo.GetFS(ctx, fs)
	if err != nil {
		return moveReply{}, err
	}
	if !f.IsCandidate(to) {
		return moveReply{}, fmt.Errorf("node %s is not a candidate of %s", to, fs)
	}
	if f.Owner == to {
		return moveReply{Owner: f.Owner, Epoch: f.Epoch}, nil
	}
	addr := n.rpcAddr(to)
	if i, ok := n.member.Lookup(to); !ok || i.Status != member.Alive || addr == "" {
		return moveReply{}, fmt.Errorf("node %s is not an alive member", to)
	}
	var reply moveReply
	req := moveReq{FS: fs, To: to, Reason: "moved by hand to " + to}
	err = n.client.Call(ctx, to, addr, pathTakeover, req, &reply)
	return reply, err
}

// onTakeover runs on the target of a move.
func (n *Node) onTakeover(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req moveReq
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	fs, err := n.repo.GetFS(ctx, req.FS)
	if err != nil {
		return nil, err
	}
	if why := n.ineligible(fs); why != "" {
		return nil, fmt.Errorf("%s cannot serve %s: %s", n.cfg.Name, req.FS, why)
	}
	gen := n.own.Gen() // a lapse during the move voids it
	switch {
	case fs.Owner == "":
		if _, err := n.claim(req.FS, "", "had no owner (moved by hand)"); err != nil {
			return nil, err
		}
	case n.ownerDead(fs.Owner):
		n.takeOver(req.FS, fs.Owner, req.Reason)
	default:
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.client.Call(hctx, fs.Owner, n.rpcAddr(fs.Owner), pathHandover, moveReq{FS: req.FS, To: n.cfg.Name, Reason: req.Reason}, nil)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("owner %s did not hand %s over: %w", fs.Owner, req.FS, err)
		}
	}
	if f, err := n.repo.GetFS(ctx, req.FS); err == nil && f.Owner == n.cfg.Name {
		n.own.Claimed(f.Name, f.Epoch, gen) // moved to this process at its request: its own epoch
	}
	n.reconcile() // start the session now
	fs, err = n.repo.GetFS(ctx, req.FS)
	if err != nil {
		return nil, err
	}
	if fs.Owner != n.cfg.Name {
		return nil, fmt.Errorf("%s is owned by %s now", req.FS, fs.Owner)
	}
	return moveReply{Owner: fs.Owner, Epoch: fs.Epoch}, nil
}

// onHandover runs on the owner: stop the session, then give the
// filesystem to the target at epoch+1.
func (n *Node) onHandover(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req moveReq
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	m := n.lookup(req.FS)
	if m == nil || m.currentDM() == nil {
		return nil, fmt.Errorf("%s does not run the session of %s", n.cfg.Name, req.FS)
	}
	m.stopDM(req.Reason)
	if err := failpoint.Hit(failpoint.HandoverAfterStop); err != nil {
		n.kick()
		return nil, err
	}
	fs, err := n.repo.GetFS(ctx, req.FS)
	if err == nil && fs.Owner != n.cfg.Name {
		return struct{}{}, nil // not ours any more
	}
	if err == nil {
		err = n.move(req.FS, fs.Epoch, req.To, req.Reason)
	}
	if errors.Is(err, repo.ErrOwnerChanged) {
		return struct{}{}, nil
	}
	if err != nil {
		n.kick() // still ours: the reconcile loop starts the session again
		return nil, err
	}
	return struct{}{}, nil
}
