package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cascadefs/cascadefs/cluster/rpc"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/fusefs"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/scrub"
	"github.com/cascadefs/cascadefs/settings"
)

// register installs the node RPC handlers.
func (n *Node) register() {
	n.server.Handle(pathPing, func(ctx context.Context, caller string, _ json.RawMessage) (any, error) {
		return pingReply{Name: n.cfg.Name}, nil
	})
	n.server.Handle(pathEvent, n.onEvent)
	n.server.Handle(pathTakeover, n.onTakeover)
	n.server.Handle(pathHandover, n.onHandover)
	n.server.Handle(pathReconcile, n.onReconcile)
	n.server.Handle(pathScrub, onOwner(n, func(dm *daemon.DM, ctx context.Context, opt scrub.Options) (*scrub.Report, error) {
		return dm.Scrub(ctx, opt, nil)
	}))
	n.server.Handle(pathCancel, n.onCancel)
	n.server.Handle(pathUndelete, onOwner(n, (*daemon.DM).Undelete))
	n.server.Handle(pathImport, onOwner(n, func(dm *daemon.DM, ctx context.Context, req migrate.ImportRequest) (*migrate.ImportReport, error) {
		return dm.Import(ctx, req, nil)
	}))
	n.server.Handle(pathWake, func(ctx context.Context, caller string, _ json.RawMessage) (any, error) {
		n.kick() // a filesystem was handed over: look at the repository now
		return struct{}{}, nil
	})
	n.server.Handle(pathMigrate, n.onMigrate)
	n.server.Handle(pathSession, func(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
		var req fsReq
		dm, err := n.owned(raw, &req, &req.FS)
		if err != nil {
			return nil, err
		}
		return dm.Session(ctx), nil
	})
	n.server.Handle(pathSpace, n.onSpace)
	n.server.Handle(pathHold, n.onHold)
	n.server.Handle(pathUnhold, func(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
		var req holdReq
		if err := json.Unmarshal(raw, &req); err != nil {
			return nil, err
		}
		n.holds.release(req.Token)
		return struct{}{}, nil
	})
	// A batch of up to maxBatch changes, each with names up to NAME_MAX.
	n.server.HandleLimit(pathInvalidate, 1<<20, func(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
		var req invalidateReq
		if err := json.Unmarshal(raw, &req); err != nil {
			return nil, err
		}
		if m := n.lookup(req.FS); m != nil {
			if req.Ino != 0 {
				m.mount.FS().Invalidate(fusefs.Change{Ino: req.Ino})
			}
			for _, c := range req.Changes {
				m.mount.FS().Invalidate(c)
			}
		}
		return struct{}{}, nil
	})
}

// owned decodes a request and returns the DM session of its filesystem,
// or a not-owner error that sends the caller to look again.
func (n *Node) owned(raw json.RawMessage, req any, fs *string) (*daemon.DM, error) {
	if err := json.Unmarshal(raw, req); err != nil {
		return nil, err
	}
	m := n.lookup(*fs)
	if m == nil {
		return nil, rpc.Coded(codeNotOwner, fmt.Errorf("%s: filesystem %s is not mounted here", n.cfg.Name, *fs))
	}
	dm := m.currentDM()
	if dm == nil {
		return nil, rpc.Coded(codeNotOwner, fmt.Errorf("%s does not run the DM session of %s", n.cfg.Name, *fs))
	}
	return dm, nil
}

// onOwner serves a call that runs on the owner (ownerReq, ownerReply):
// run's error goes back in the reply, final; not owning the filesystem
// is the call's error, which makes the caller look for the owner again.
func onOwner[Req, Res any](n *Node, run func(*daemon.DM, context.Context, Req) (Res, error)) rpc.Handler {
	return func(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
		var req ownerReq[Req]
		dm, err := n.owned(raw, &req, &req.FS)
		if err != nil {
			return nil, err
		}
		res, err := run(dm, ctx, req.Request)
		reply := ownerReply[Res]{Result: res}
		if err != nil {
			reply.Error = err.Error()
		}
		return reply, nil
	}
}

// onSpace serves a space query or an out-of-space event from another node.
func (n *Node) onSpace(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req spaceReq
	dm, err := n.owned(raw, &req, &req.FS)
	if err != nil {
		return nil, err
	}
	sp, err := dm.Space(ctx, req.Need)
	switch {
	case errors.Is(err, dmapi.ErrNoSpace):
		return spaceReply{Space: sp, NoSpace: true}, nil
	case errors.Is(err, dmapi.ErrClosed):
		return nil, rpc.Coded(codeNotOwner, err) // ask the next owner
	case err != nil:
		return nil, err
	}
	return spaceReply{Space: sp}, nil
}

// onEvent serves a synchronous event from another node: the caller waits
// for the answer; if it goes away (its reader was interrupted), the
// shared recall goes on.
func (n *Node) onEvent(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req eventReq
	dm, err := n.owned(raw, &req, &req.FS)
	if err != nil {
		return nil, err
	}
	if err := checkEventPath(&req.Event); err != nil {
		return nil, rpc.Coded(codeBadRequest, err)
	}
	if err := dm.Raise(ctx, &req.Event); err != nil {
		if errors.Is(err, dmapi.ErrClosed) || errors.Is(err, dmapi.ErrFenced) {
			return nil, rpc.Coded(codeNotOwner, err) // send it to the next owner
		}
		if errors.Is(err, dmapi.ErrCanceled) {
			return nil, rpc.Coded(codeCanceled, err)
		}
		return nil, err
	}
	return struct{}{}, nil
}

// onCancel cancels pending events on the owner (an admin's recall --cancel
// on another node).
func (n *Node) onCancel(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req cancelReq
	dm, err := n.owned(raw, &req, &req.FS)
	if err != nil {
		return nil, err
	}
	evs, err := dm.Cancel(ctx, req.Request)
	return cancelReply{Events: evs}, err
}

func (n *Node) onReconcile(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req reconcileReq
	dm, err := n.owned(raw, &req, &req.FS)
	if err != nil {
		return nil, err
	}
	rep, err := dm.Reconcile(ctx, req.Options, nil)
	reply := reconcileReply{Report: rep}
	if err != nil {
		reply.Error = err.Error()
	}
	return reply, nil
}

func (n *Node) onMigrate(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req migrateReq
	dm, err := n.owned(raw, &req, &req.FS)
	if err != nil {
		return nil, err
	}
	// Refused here with a clear error; the migrator resolves it beneath
	// the backing root again, without following symlinks.
	if _, err := beneath.Clean(req.Path); err != nil {
		return nil, rpc.Coded(codeBadRequest, fmt.Errorf("migrate: %w", err))
	}
	res, err := dm.Migrate(ctx, req.Path, req.Ino, req.Premigrate)
	reply := migrateReply{Result: res}
	if err != nil {
		reply.Error, reply.Busy = err.Error(), errors.Is(err, dmapi.ErrBusy)
	}
	return reply, nil
}

// checkEventPath refuses an event whose path could name something outside
// the backing tree (the recall opens it beneath the root anyway).
func checkEventPath(ev *dmapi.Event) error {
	if ev.Path == "" && len(ev.Handle) > 0 {
		return nil
	}
	if _, err := beneath.Clean(ev.Path); err != nil {
		return fmt.Errorf("event: %w", err)
	}
	return nil
}

// A hold ends by itself after the releaser's hold-lease (settings), so
// that a releaser that vanished (crashed mid-release) leaves no file held;
// a request is kept within these bounds.
const (
	minHoldLease = time.Second
	maxHoldLease = 10 * time.Minute
)

// onHold closes a file on this node for another node's release: new opens
// wait, and the answer comes once no handle is open (or the wait is over).
func (n *Node) onHold(ctx context.Context, caller string, raw json.RawMessage) (any, error) {
	var req holdReq
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	m := n.lookup(req.FS)
	if m == nil {
		return struct{}{}, nil // not mounted here: nothing can be open
	}
	unhold, err := m.mount.FS().Hold(ctx, req.Ino, time.Duration(req.WaitMs)*time.Millisecond)
	if err != nil {
		return nil, rpc.Coded("busy", fmt.Errorf("open on %s: %w", n.cfg.Name, err))
	}
	lease := settings.Defaults().HoldLease
	if req.LeaseMs > 0 {
		lease = min(max(time.Duration(req.LeaseMs)*time.Millisecond, minHoldLease), maxHoldLease)
	}
	n.holds.add(req.Token, unhold, lease)
	return struct{}{}, nil
}
