package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/cluster/rpc"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/cascadefs/cascadefs/scrub"
	"github.com/cascadefs/cascadefs/settings"
)

// mounted is a filesystem this node mounts. It is the mount's DMAccess:
// events, migrations and status go to the DM session of the owner, here
// or over the node RPC, and follow the owner when it changes.
type mounted struct {
	n     *Node
	name  string
	mount *daemon.Mount
	queue *migrate.DestroyQueue
	// changes sends attribute and name changes made here to the other nodes.
	changes *changeQueue

	mu     sync.Mutex
	conf   repo.FS
	confAt time.Time // when conf was read from the repository
	// set is conf's settings, read; when the stored ones stop parsing (a
	// newer node's key during an upgrade, a hand edit) it keeps the last
	// good ones, and setErr says why, in the log and in status.
	set     settings.FS
	setErr  string
	dm      *daemon.DM // while this node owns the filesystem
	dmEpoch uint64     // the epoch dm runs at
	// dmArch: the archive spec and key file dm runs with: others (fs set
	// --archive, fs set encryption-key-file) restart it.
	dmArch string
	// ownerGone is closed when conf's owner or epoch changes.
	ownerGone chan struct{}
}

// ownerFresh: how long a looked-up owner is used without reading the
// repository again (a read per event costs a bbolt open); any failure to
// reach that owner looks it up again at once.
const ownerFresh = 200 * time.Millisecond

var _ daemon.DMAccess = (*mounted)(nil)

func (n *Node) mountFS(fs repo.FS) (*mounted, error) {
	mp, err := mkdirMount(n.cfg.MountRoot, fs.Name, n.cfg.RunDir)
	if err != nil {
		return nil, err
	}
	s, err := settings.Parse(fs.Settings)
	if err != nil {
		// No last good settings to keep: running without (no quota, say)
		// is worse than not mounting until they are mended.
		return nil, fmt.Errorf("stored settings do not parse, not mounted until they do: %w", err)
	}
	m := &mounted{n: n, name: fs.Name, conf: fs, set: s}
	m.changes = newChangeQueue(n, fs.Name)
	raise := func(ctx context.Context, ev *dmapi.Event) error { return m.Raise(ctx, ev) }
	m.queue = migrate.NewDestroyQueue(repo.Entries{Repo: n.repo, FS: fs.Name}, fs.Name, n.cfg.Name, fs.Backing, raise, n.alive, n.log)
	m.queue.SetRetention(s.Retention)
	cfg := daemon.Config{Name: fs.Name, Backing: fs.Backing, Mountpoint: mp, ArchiveURL: fs.Archive,
		Source: fs.Name + "@" + n.cfg.Name, RunDir: n.cfg.RunDir, Settings: s, NoPassthrough: n.cfg.NoPassthrough,
		AllowUserBacking: n.cfg.AllowUserBacking,
		Written:          func(ino uint64) { n.invalidatePeers(fs.Name, ino) },
		Changed:          m.changes.add,
		Policy:           func() migrate.Policy { return m.settings().Policy },
		Metrics:          n.metrics}
	if m.mount, err = daemon.StartMount(cfg, m, m.queue, n.log); err != nil {
		m.changes.stop()
		return nil, err
	}
	return m, nil
}

func (m *mounted) setConf(fs repo.FS) {
	m.mu.Lock()
	if (fs.Owner != m.conf.Owner || fs.Epoch != m.conf.Epoch) && m.ownerGone != nil {
		close(m.ownerGone) // calls to the old owner give up
		m.ownerGone = nil
	}
	m.conf, m.confAt = fs, time.Now()
	set, err := settings.Parse(fs.Settings)
	was := m.setErr
	if err == nil {
		m.set, m.setErr = set, ""
		m.queue.SetRetention(set.Retention)
	} else {
		m.setErr = err.Error()
	}
	m.mu.Unlock()
	switch {
	case err != nil && err.Error() != was:
		m.n.log.Error("stored settings do not parse; keeping the last good ones", "fs", fs.Name, "err", err)
	case err == nil && was != "":
		m.n.log.Info("stored settings parse again", "fs", fs.Name)
	}
}

// settings are the filesystem's settings: the stored ones, or the last
// good ones while the stored ones do not parse.
func (m *mounted) settings() settings.FS {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.set
}

// settingsError says why the stored settings are not in use ("" if
// they are).
func (m *mounted) settingsError() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.setErr
}

func (m *mounted) config() repo.FS {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conf
}

func (m *mounted) currentDM() *daemon.DM {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dm
}

// ensureDM runs the DM session of an owned filesystem at fs.Epoch.
func (m *mounted) ensureDM(fs repo.FS) error {
	if m.refreshSettings(fs) {
		return nil
	}
	reason := fmt.Sprintf("epoch is now %d", fs.Epoch) // a session at an older epoch would be fenced
	m.mu.Lock()
	if m.dm != nil && m.dmEpoch == fs.Epoch {
		reason = "the archive's copies or key file changed"
	}
	m.mu.Unlock()
	m.stopDM(reason)
	gen, ok := m.n.own.ClaimedIn(fs.Name, fs.Epoch)
	if !ok {
		return fmt.Errorf("epoch %d: %w", fs.Epoch, errLapsedSinceClaim)
	}
	s := m.settings()
	m.mu.Lock()
	defer m.mu.Unlock()
	dm, err := daemon.StartDM(m.n.ctx, daemon.DMConfig{Name: fs.Name, Backing: fs.Backing, ArchiveURL: fs.Archive,
		Owner: m.n.cfg.Name, Epoch: fs.Epoch, Queue: m.queue, Gate: &clusterGate{n: m.n, m: m}, Fence: m.fence(fs.Epoch, gen),
		Acting:   func() error { return m.n.actingIn(gen) },
		Settings: s, Metrics: m.n.metrics}, m.n.log)
	if err != nil {
		return err
	}
	m.dm, m.dmEpoch, m.dmArch = dm, fs.Epoch, sessionArchive(fs, s)
	m.n.log.Info("DM session started", "fs", fs.Name, "epoch", fs.Epoch)
	return nil
}

// sessionArchive is what a session's archive is made of: its copies and
// the key file that seals and opens its objects.
func sessionArchive(fs repo.FS, s settings.FS) string { return fs.Archive + "\x00" + s.KeyFile }

// archiveChanged reports whether the session here runs at fs's epoch
// with other archive copies or another key file than fs names.
func (m *mounted) archiveChanged(fs repo.FS) bool {
	s := m.settings()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dm != nil && m.dmEpoch == fs.Epoch && m.dmArch != sessionArchive(fs, s)
}

// refreshSettings applies fs's settings to the session running at its
// epoch (`fs set` applies without a restart); false if none runs.
func (m *mounted) refreshSettings(fs repo.FS) bool {
	s := m.settings()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dm == nil || m.dmEpoch != fs.Epoch || m.dmArch != sessionArchive(fs, s) {
		return false
	}
	m.dm.SetPolicy(s.Policy)
	m.dm.SetRates(s.RecallRate, s.MigrateRate)
	m.dm.SetScrub(s.ScrubEvery, s.ScrubRate)
	m.dm.SetRetention(s.Retention)
	return true
}

// runningEpoch gives the epoch of the session running here, if any.
func (m *mounted) runningEpoch() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dmEpoch, m.dm != nil
}

// errLapsedSinceClaim: the lease lapsed after the epoch was claimed; the
// next reconcile claims a new one (not a reason to give the filesystem up).
var errLapsedSinceClaim = errors.New("not claimed by this process since its lease last lapsed")

func (m *mounted) stopDM(why string) {
	m.mu.Lock()
	dm := m.dm
	m.dm = nil
	m.mu.Unlock()
	if dm != nil {
		dm.Close()
		m.n.log.Info("DM session stopped", "fs", m.name, "reason", why)
	}
}

// stop ends the session and unmounts; with handOver, an owned filesystem
// is handed over first.
func (m *mounted) stop(handOver bool) {
	owned := m.currentDM() != nil
	m.stopDM("node stopping")
	if handOver && owned {
		m.handOver(m.n.cfg.Name + " is stopping")
	}
	m.mount.Stop()
	m.changes.stop()
}

// handOver leaves the filesystem without owner (once the session stopped,
// so that its events go elsewhere) and wakes the other nodes to take it.
func (m *mounted) handOver(why string) { m.n.handOverByName(m.name, why) }

// owner looks the current owner up in the repository.
func (m *mounted) owner() (repo.FS, error) {
	fs, err := m.n.repo.GetFS(context.Background(), m.name)
	if err == nil {
		m.setConf(fs)
	}
	return fs, err
}

// cachedOwner is owner, answered from the last lookup if it is fresh.
func (m *mounted) cachedOwner() (repo.FS, error) {
	m.mu.Lock()
	fs, at := m.conf, m.confAt
	m.mu.Unlock()
	if time.Since(at) < ownerFresh {
		return fs, nil
	}
	return m.owner()
}

// adminPatience: how long an admin call waits for an unreadable
// repository before it fails.
const adminPatience = 10 * time.Second

// callOwner runs remote against fs.Owner, cancelled as soon as this node
// learns of another owner or epoch: an owner that is paused (SIGSTOP, a
// frozen VM) keeps its connections open and would hold the call forever.
func (m *mounted) callOwner(ctx context.Context, fs repo.FS, remote func(ctx context.Context, to, addr string) error) error {
	m.mu.Lock()
	if m.ownerGone == nil {
		m.ownerGone = make(chan struct{})
	}
	gone := m.ownerGone
	same := m.conf.Owner == fs.Owner && m.conf.Epoch == fs.Epoch
	m.mu.Unlock()
	if !same {
		return fmt.Errorf("owner changed to %s", m.config().Owner)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// While gossip says the owner is down, look at the repository
		// too: the reconcile loop alone would tell this node up to its
		// period after the takeover.
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-gone:
				cancel()
				return
			case <-cctx.Done():
				return
			case <-tick.C:
				if !m.n.alive(fs.Owner) {
					m.owner() // a change closes gone
				}
			}
		}
	}()
	return remote(cctx, fs.Owner, m.n.rpcAddr(fs.Owner))
}

// route calls local when this node owns the filesystem, else remote with
// the owner's RPC address; it follows owner changes until ctx ends. A
// handler's own error (a failed recall) is final; a node that is not (or
// no longer) the owner, or cannot be reached, makes it look again.
func (m *mounted) route(ctx context.Context, local func(*daemon.DM) error, remote func(ctx context.Context, to, addr string) error) error {
	_, bounded := ctx.Deadline()
	var unreadableSince time.Time
	for attempt := 0; ; attempt++ {
		lookup := m.owner
		if attempt == 0 {
			lookup = m.cachedOwner
		}
		fs, err := lookup()
		if err == nil {
			unreadableSince = time.Time{}
		}
		switch {
		case err != nil:
			// Events wait until their own timeout; an admin call (no
			// deadline) is told after a while rather than left hanging.
			if unreadableSince.IsZero() {
				unreadableSince = time.Now()
			} else if !bounded && time.Since(unreadableSince) > adminPatience {
				return fmt.Errorf("the repository stayed unreadable for %s: %w", adminPatience, err)
			}
			m.n.log.Warn("repository unreadable, retrying", "fs", m.name, "reason", err)
		case fs.Owner == m.n.cfg.Name:
			if dm := m.currentDM(); dm != nil {
				err := local(dm)
				if !errors.Is(err, dmapi.ErrClosed) && !errors.Is(err, dmapi.ErrFenced) {
					return err
				}
			}
			m.n.kick() // we own it but run no session (any more)
		case fs.Owner != "":
			if addr := m.n.rpcAddr(fs.Owner); addr != "" {
				err := m.callOwner(ctx, fs, remote)
				if err == nil || ctx.Err() != nil {
					return err
				}
				var re *rpc.RemoteError
				if errors.As(err, &re) && re.Code != codeNotOwner {
					return err
				}
				if errors.Is(err, rpc.ErrUnauthorized) || errors.Is(err, rpc.ErrBadAnswer) {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		// Short: after a failover the new owner is known within a few hundred ms.
		case <-time.After(min(time.Duration(25<<min(attempt, 3))*time.Millisecond, 200*time.Millisecond)):
		}
	}
}

// Raise sends a synchronous event to the owner's session and waits; the
// event is sent again to a new owner after a change (its token makes that
// idempotent), until the event timeout.
func (m *mounted) Raise(ctx context.Context, ev *dmapi.Event) error {
	if ev.Token == "" {
		ev.Token = dmapi.NewToken()
	}
	if ev.Node == "" {
		ev.Node = m.n.cfg.Name
	}
	ctx, cancel := context.WithTimeout(ctx, m.settings().EventTimeout)
	defer cancel()
	return m.route(ctx,
		func(dm *daemon.DM) error { return dm.Raise(ctx, ev) },
		func(ctx context.Context, to, addr string) error {
			err := m.n.client.Call(ctx, to, addr, pathEvent, eventReq{FS: m.name, Event: *ev}, nil)
			if rpc.CodeOf(err) == codeCanceled {
				return fmt.Errorf("%w: %w", dmapi.ErrCanceled, err) // still the remote error: not sent again
			}
			return err
		})
}

// Cancel cancels pending events on the owner.
func (m *mounted) Cancel(ctx context.Context, req daemon.CancelRequest) ([]dmapi.Event, error) {
	var evs []dmapi.Event
	err := m.route(ctx,
		func(dm *daemon.DM) (err error) { evs, err = dm.Cancel(ctx, req); return err },
		func(ctx context.Context, to, addr string) error {
			var reply cancelReply
			err := m.n.client.Call(ctx, to, addr, pathCancel, cancelReq{FS: m.name, Request: req}, &reply)
			evs = reply.Events
			return err
		})
	return evs, err
}

// Migrate runs a migration on the owner.
func (m *mounted) Migrate(ctx context.Context, rel string, ino uint64, premigrate bool) (migrate.Result, error) {
	res := migrate.Result{Path: rel}
	var remoteErr error
	err := m.route(ctx,
		func(dm *daemon.DM) (err error) { res, remoteErr = dm.Migrate(ctx, rel, ino, premigrate); return nil },
		func(ctx context.Context, to, addr string) error {
			var reply migrateReply
			if err := m.n.client.Call(ctx, to, addr, pathMigrate, migrateReq{FS: m.name, Path: rel, Ino: ino, Premigrate: premigrate}, &reply); err != nil {
				return err
			}
			res = reply.Result
			switch {
			case reply.Busy:
				remoteErr = fmt.Errorf("%s: %w", reply.Error, dmapi.ErrBusy)
			case reply.Error != "":
				remoteErr = errors.New(reply.Error)
			}
			return nil
		})
	if err != nil {
		return res, err
	}
	return res, remoteErr
}

// Undelete runs on the owner.
func (m *mounted) Undelete(ctx context.Context, req migrate.UndeleteRequest) (migrate.KeptVersion, error) {
	return callOwner(ctx, m, pathUndelete, req, func(dm *daemon.DM) (migrate.KeptVersion, error) { return dm.Undelete(ctx, req) })
}

// Import runs on the owner (progress is shown there only).
func (m *mounted) Import(ctx context.Context, req migrate.ImportRequest, progress func(migrate.ImportReport)) (*migrate.ImportReport, error) {
	return callOwner(ctx, m, pathImport, req, func(dm *daemon.DM) (*migrate.ImportReport, error) { return dm.Import(ctx, req, progress) })
}

// callOwner runs local when this node owns the filesystem, else calls
// path on the owner with req (onOwner serves it there).
func callOwner[Req, Res any](ctx context.Context, m *mounted, path string, req Req, local func(*daemon.DM) (Res, error)) (Res, error) {
	var res Res
	var runErr error
	err := m.route(ctx,
		func(dm *daemon.DM) error { res, runErr = local(dm); return nil },
		func(ctx context.Context, to, addr string) error {
			var reply ownerReply[Res]
			if err := m.n.client.Call(ctx, to, addr, path, ownerReq[Req]{FS: m.name, Request: req}, &reply); err != nil {
				return err
			}
			res = reply.Result
			if reply.Error != "" {
				runErr = errors.New(reply.Error)
			}
			return nil
		})
	if err != nil {
		return res, err
	}
	return res, runErr
}

// Reconcile runs on the owner. Progress is shown only when this node is
// the owner; from another node the report comes at the end.
func (m *mounted) Reconcile(ctx context.Context, opt migrate.ReconcileOptions, progress func(migrate.ReconcileProgress)) (*migrate.ReconcileReport, error) {
	var rep *migrate.ReconcileReport
	var runErr error
	err := m.route(ctx,
		func(dm *daemon.DM) error { rep, runErr = dm.Reconcile(ctx, opt, progress); return nil },
		func(ctx context.Context, to, addr string) error {
			if progress != nil {
				progress(migrate.ReconcileProgress{Phase: "running on " + to})
			}
			var reply reconcileReply
			if err := m.n.client.Call(ctx, to, addr, pathReconcile, reconcileReq{FS: m.name, Options: opt}, &reply); err != nil {
				return err
			}
			rep = reply.Report
			if reply.Error != "" {
				runErr = errors.New(reply.Error)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return rep, runErr
}

// Scrub runs on the owner; from another node the report comes at the end.
func (m *mounted) Scrub(ctx context.Context, opt scrub.Options, progress func(scrub.Report)) (*scrub.Report, error) {
	return callOwner(ctx, m, pathScrub, opt, func(dm *daemon.DM) (*scrub.Report, error) { return dm.Scrub(ctx, opt, progress) })
}

// Space asks the owner's space monitor; an out-of-space event (need > 0)
// follows the owner like any synchronous event.
func (m *mounted) Space(ctx context.Context, need int64) (dmapi.Space, error) {
	var sp dmapi.Space
	var noSpace error
	err := m.route(ctx,
		func(dm *daemon.DM) (err error) {
			sp, err = dm.Space(ctx, need)
			if errors.Is(err, dmapi.ErrNoSpace) {
				noSpace, err = err, nil
			}
			return err
		},
		func(ctx context.Context, to, addr string) error {
			var reply spaceReply
			if err := m.n.client.Call(ctx, to, addr, pathSpace, spaceReq{FS: m.name, Need: need}, &reply); err != nil {
				return err
			}
			if sp = reply.Space; reply.NoSpace {
				noSpace = dmapi.ErrNoSpace
			}
			return nil
		})
	if err != nil {
		return sp, err
	}
	return sp, noSpace
}

// Session describes the owner's session.
func (m *mounted) Session(ctx context.Context) daemon.SessionInfo {
	fs, err := m.owner()
	switch {
	case err != nil:
		return daemon.SessionInfo{State: "repository unreadable: " + err.Error()}
	case fs.Owner == "":
		return daemon.SessionInfo{Epoch: fs.Epoch, State: "no owner: waiting for an eligible candidate"}
	case fs.Owner == m.n.cfg.Name:
		if dm := m.currentDM(); dm != nil {
			return dm.Session(ctx)
		}
		return daemon.SessionInfo{Owner: fs.Owner, Epoch: fs.Epoch, State: "starting"}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var reply sessionReply
	if err := m.n.client.Call(ctx, fs.Owner, m.n.rpcAddr(fs.Owner), pathSession, fsReq{FS: m.name}, &reply); err != nil {
		return daemon.SessionInfo{Owner: fs.Owner, Epoch: fs.Epoch, State: "owner unreachable: " + err.Error()}
	}
	return reply
}
