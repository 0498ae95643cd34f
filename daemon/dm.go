package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/throttle"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/recall"
	"github.com/cascadefs/cascadefs/scrub"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/settings"
)

// DMAccess is how a mount reaches the DM application of its filesystem:
// in-process on the owner (*DM), over the node RPC elsewhere.
type DMAccess interface {
	// Raise sends a synchronous event and waits for its answer.
	Raise(ctx context.Context, ev *dmapi.Event) error
	// Migrate migrates (or premigrates) one file, by backing-relative path.
	// A non-zero ino is the inode found at rel: another file there is refused.
	Migrate(ctx context.Context, rel string, ino uint64, premigrate bool) (migrate.Result, error)
	// Session describes the DM session serving the filesystem.
	Session(ctx context.Context) SessionInfo
	// Space returns the space monitor's last measurement (need 0), or
	// raises an out-of-space event for need bytes and waits for the cycle.
	Space(ctx context.Context, need int64) (dmapi.Space, error)
	// Reconcile walks the filesystem and its archive side by side (on
	// the owner), reporting progress as it goes.
	Reconcile(ctx context.Context, opt migrate.ReconcileOptions, progress func(migrate.ReconcileProgress)) (*migrate.ReconcileReport, error)
	// Cancel ends the pending events on the files it names (on the
	// owner): their waiters get dmapi.ErrCanceled, their GETs stop.
	Cancel(ctx context.Context, req CancelRequest) ([]dmapi.Event, error)
	// Scrub reads the archive's copies back and checks every chunk (on
	// the owner), reporting each file finished.
	Scrub(ctx context.Context, opt scrub.Options, progress func(scrub.Report)) (*scrub.Report, error)
	// Undelete brings a kept version back as a migrated stub (on the
	// owner).
	Undelete(ctx context.Context, req migrate.UndeleteRequest) (migrate.KeptVersion, error)
	// Import makes stubs for objects cascadefs did not write (on the
	// owner), reporting each object done.
	Import(ctx context.Context, req migrate.ImportRequest, progress func(migrate.ImportReport)) (*migrate.ImportReport, error)
}

// CancelRequest names the files whose pending events an admin cancels:
// by inode (found at the paths given) or by backing-relative path (the
// file or anything under the directory), or all of them.
type CancelRequest struct {
	Inos  []uint64 `json:"inos,omitempty"`
	Paths []string `json:"paths,omitempty"`
	All   bool     `json:"all,omitempty"`
}

// Matches reports whether the request names the event's file.
func (r *CancelRequest) Matches(ev *dmapi.Event) bool {
	if ev.Type == dmapi.Destroy {
		return false // durable clean-up, not a wait: never cancelled
	}
	if r.All || slices.Contains(r.Inos, ev.Ino) {
		return true
	}
	for _, p := range r.Paths {
		if p == "." || ev.Path == p || strings.HasPrefix(ev.Path, p+"/") {
			return true
		}
	}
	return false
}

// SessionInfo is what status shows of a DM session.
type SessionInfo struct {
	Owner          string               `json:"owner,omitempty"`
	Epoch          uint64               `json:"epoch,omitempty"`
	State          string               `json:"state"` // active, or why not
	Workers        int                  `json:"workers,omitempty"`
	PendingEvents  []dmapi.PendingEvent `json:"pending_events"`
	PendingDestroy int                  `json:"pending_destroy"`
	Space          *migrate.SpaceStatus `json:"space,omitempty"`
	// LastReconcile: the last reconcile run by this session (lists cut).
	LastReconcile *migrate.ReconcileReport `json:"last_reconcile,omitempty"`
	// LastScrub: the last scrub run by this session (problems cut).
	LastScrub *scrub.Report `json:"last_scrub,omitempty"`
	Rates     *Rates        `json:"rates,omitempty"`
	// Copies: the archive's copies, and what their faults and repairs were
	// (only when there is more than one).
	Copies *recall.CopyStats `json:"copies,omitempty"`
}

// Rates are the session's transfers now (bytes per second over the last
// few seconds) and their caps (0: none).
type Rates struct {
	Recall       float64 `json:"recall"`
	RecallLimit  int64   `json:"recall_limit"`
	Migrate      float64 `json:"migrate"`
	MigrateLimit int64   `json:"migrate_limit"`
}

// DMConfig is the DM side of one filesystem.
type DMConfig struct {
	Name       string
	Backing    string
	ArchiveURL string
	Owner      string // this node, as shown in status
	Epoch      uint64
	Queue      *migrate.DestroyQueue // durable DESTROY events (started by the DM)
	Gate       migrate.Gate          // who must agree before a release
	Fence      dmapi.Fence           // guards commits (nil: single node)
	// Acting, if set, fails once this node may no longer act for the
	// filesystem (its lease lapsed): checked before each recall write.
	Acting   func() error
	Settings settings.FS       // the filesystem's, when the session started
	Metrics  *metrics.Registry // nil: none
}

// DM is the DM application of one filesystem on its owner: the session,
// the recall workers, migration and the DESTROY queue worker.
type DM struct {
	cfg      DMConfig
	root     *beneath.Root
	log      *slog.Logger
	arch     archive.Archive
	session  *dmapi.Session
	recall   *recall.Manager
	migrator *migrate.Migrator
	monitor  *migrate.Monitor

	reconciling   sync.Mutex // one reconcile at a time
	lastReconcile atomic.Pointer[migrate.ReconcileReport]
	scrubbing     sync.Mutex   // one scrub at a time
	scrubEvery    atomic.Int64 // the settings scrub-interval and scrub-rate, as now set
	scrubRate     atomic.Int64
	retention     atomic.Int64 // the setting retention, as now set: how long uploads are locked
	lastScrub     atomic.Pointer[scrub.Report]

	// The calls in flight (admin and RPC migrations, reconciles, waits
	// for space): Close cancels them and waits, and the fence refuses
	// every commit once closed, so that nothing this session started
	// commits after the next session began.
	ctx    context.Context
	cancel context.CancelFunc
	callMu sync.Mutex
	closed bool
	calls  sync.WaitGroup
}

// ErrSessionClosed: the DM session serving a call was closed (a lapse, a
// new epoch, a stop); the call committed nothing after that.
var ErrSessionClosed = fmt.Errorf("%w: the DM session was closed", dmapi.ErrFenced)

// enter registers a call; its context ends when the session closes. The
// returned function ends the call.
func (d *DM) enter(ctx context.Context) (context.Context, func(), error) {
	d.callMu.Lock()
	defer d.callMu.Unlock()
	if d.closed {
		return nil, nil, ErrSessionClosed
	}
	d.calls.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.ctx, cancel)
	return ctx, func() { stop(); cancel(); d.calls.Done() }, nil
}

// fence is cfg.Fence refusing every commit once the session closed.
func (d *DM) fence(commit func() error) error {
	if d.ctx.Err() != nil {
		return ErrSessionClosed
	}
	return d.cfg.Fence.Run(commit)
}

var _ DMAccess = (*DM)(nil)

// OpenArchive opens an archive URL and checks that it answers.
func OpenArchive(ctx context.Context, url string) (archive.Archive, error) {
	arch, err := archive.Open(url)
	if err != nil {
		return nil, err
	}
	checkCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := arch.Check(checkCtx); err != nil {
		return nil, err
	}
	return arch, nil
}

// StartDM starts the DM application; the archive must answer.
func StartDM(ctx context.Context, cfg DMConfig, log *slog.Logger) (*DM, error) {
	set := cfg.Settings
	var keys *seal.Keyring
	if set.KeyFile != "" {
		var err error
		if keys, err = seal.Load(set.KeyFile); err != nil {
			return nil, err
		}
	}
	arch, err := OpenArchive(ctx, cfg.ArchiveURL)
	if err != nil {
		return nil, err
	}
	root, err := beneath.Open(cfg.Backing)
	if err != nil {
		return nil, fmt.Errorf("backing directory: %w", err)
	}
	d := &DM{cfg: cfg, root: root, log: log, arch: arch}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	rights := &dmapi.Rights{}
	d.recall = recall.NewManager(root, arch, rights, cfg.Queue, set.Recall, log)
	d.recall.Fence = d.fence
	d.recall.Acting = cfg.Acting
	d.recall.Throttle = throttle.New(set.RecallRate)
	d.recall.Keys = keys
	d.session = dmapi.NewSession(cfg.Name, dmapi.Config{Workers: set.Workers, Timeout: set.EventTimeout}, d.recall.Handle, log)
	d.migrator = migrate.New(root, arch, rights, cfg.Gate, cfg.Queue, migrate.Config{FS: cfg.Name, ReleaseWait: set.ReleaseWait}, log)
	d.migrator.SetLeader(set.Policy.Leader)
	d.migrator.Fence = d.fence
	d.migrator.Acting = cfg.Acting
	d.migrator.Throttle = throttle.New(set.MigrateRate)
	d.migrator.Keys = keys
	d.migrator.Yield = d.recall.YieldToRecalls
	d.count(cfg.Metrics)
	d.lockObjects(set.Retention)
	cfg.Queue.Start()
	d.monitor = migrate.NewMonitor(root, set.Policy, d.migrator, log.With("fs", cfg.Name))
	d.monitor.Cycled = func(migrate.Cycle) { cfg.Metrics.Add(metrics.SpaceCycles, 1, "fs", cfg.Name) }
	counted := d.recall.Counted
	d.recall.Counted = func(files int, bytes int64) {
		counted(files, bytes)
		d.monitor.Grew(bytes) // past high, the monitor checks now, not at its interval
	}
	d.recall.NoSpace = func(ctx context.Context, need int64) error {
		_, err := d.monitor.OutOfSpace(ctx, need)
		return err
	}
	d.monitor.Start(ctx)
	d.SetScrub(set.ScrubEvery, set.ScrubRate)
	periodic := &scrub.Periodic{Arch: arch, FS: cfg.Name, Log: log, Run: d.Scrub,
		Settings: func() (time.Duration, int64) { return time.Duration(d.scrubEvery.Load()), d.scrubRate.Load() }}
	go periodic.Loop(d.ctx)
	return d, nil
}

// lockObjects: where the archive locks objects (S3 object lock), uploads
// are locked for the retention, and a deleted or replaced version's
// objects until its retention ends (the DESTROY queue extends them and
// waits for the locks to end).
func (d *DM) lockObjects(retention time.Duration) {
	l, ok := archive.LockerOf(d.arch)
	if !ok {
		d.cfg.Queue.SetLocker(nil)
		return
	}
	d.SetRetention(retention)
	go d.keepLocks(d.ctx)
	d.cfg.Queue.SetLocker(func(ctx context.Context, key string, until time.Time) error { return lockAll(ctx, l, key, until) })
	d.log.Info("the archive locks objects: uploads are locked for the retention", "fs", d.cfg.Name, "retention", retention)
}

// SetRetention changes how long later uploads are locked, where the
// archive locks objects (after `cascadefs fs set retention=`).
func (d *DM) SetRetention(r time.Duration) {
	d.retention.Store(int64(r))
	if l, ok := archive.LockerOf(d.arch); ok {
		l.SetRetention(r)
	}
}

// SetScrub changes how often the owner scrubs by itself, and how fast
// (after `cascadefs fs set`).
func (d *DM) SetScrub(every time.Duration, rate int64) {
	d.scrubEvery.Store(int64(every))
	d.scrubRate.Store(rate)
}

// count reports migrations and recalls to the node's metrics.
func (d *DM) count(r *metrics.Registry) {
	fs := d.cfg.Name
	d.migrator.Counted = func(res migrate.Result) {
		if res.Released > 0 {
			r.Add(metrics.MigratedFiles, 1, "fs", fs)
			r.Add(metrics.MigratedBytes, float64(res.Released), "fs", fs)
		}
		r.Add(metrics.UploadedBytes, float64(res.Uploaded), "fs", fs)
	}
	d.recall.Counted = func(files int, bytes int64) {
		r.Add(metrics.RecalledFiles, float64(files), "fs", fs)
		r.Add(metrics.RecalledBytes, float64(bytes), "fs", fs)
	}
	d.recall.CopyCounted = func(faults, repairs int) {
		r.Add(metrics.CopyFaults, float64(faults), "fs", fs)
		r.Add(metrics.CopyRepaired, float64(repairs), "fs", fs)
	}
}

// Gauges sets the gauges of an owned filesystem (at a scrape).
func (d *DM) Gauges(r *metrics.Registry) {
	sp, st := d.monitor.Space(), d.monitor.Status()
	r.Set(metrics.Usage, float64(sp.Usage), "fs", d.cfg.Name)
	r.Set(metrics.Capacity, float64(sp.Capacity), "fs", d.cfg.Name)
	r.Set(metrics.HighBytes, float64(sp.HighBytes), "fs", d.cfg.Name)
	r.Set(metrics.LowBytes, float64(sp.Capacity*int64(st.Low)/100), "fs", d.cfg.Name)
	r.Set(metrics.PendingEvents, float64(len(d.session.Pending())), "fs", d.cfg.Name)

}

// Archive names the archive (without credentials).
func (d *DM) Archive() string { return d.arch.String() }

func (d *DM) Raise(ctx context.Context, ev *dmapi.Event) error { return d.session.Raise(ctx, ev) }

// Cancel ends the matching events and stops their files' recall streams.
func (d *DM) Cancel(_ context.Context, req CancelRequest) ([]dmapi.Event, error) {
	evs := d.session.Cancel(req.Matches)
	for _, ev := range evs {
		d.recall.Cancel(ev.Ino)
		d.log.Info("event cancelled by an admin", "event", ev.Type.String(), "file", ev.Path, "offset", ev.Offset, "length", ev.Length)
	}
	return evs, nil
}

func (d *DM) Migrate(ctx context.Context, rel string, ino uint64, premigrate bool) (migrate.Result, error) {
	ctx, done, err := d.enter(ctx)
	if err != nil {
		return migrate.Result{}, err
	}
	defer done()
	return d.migrator.Migrate(ctx, rel, ino, premigrate)
}

func (d *DM) Import(ctx context.Context, req migrate.ImportRequest, progress func(migrate.ImportReport)) (*migrate.ImportReport, error) {
	ctx, done, err := d.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	if req.Path != "." && !filepath.IsLocal(req.Path) {
		return nil, fmt.Errorf("import into %q: not a path inside the filesystem", req.Path)
	}
	d.log.Info("import started", "fs", d.cfg.Name, "url", req.URL, "path", req.Path, "dry_run", req.DryRun)
	return d.migrator.Import(ctx, req, progress)
}

func (d *DM) Undelete(ctx context.Context, req migrate.UndeleteRequest) (migrate.KeptVersion, error) {
	_, done, err := d.enter(ctx)
	if err != nil {
		return migrate.KeptVersion{}, err
	}
	defer done()
	for _, p := range []string{req.Path, req.To} {
		if p != "" && !filepath.IsLocal(p) {
			return migrate.KeptVersion{}, fmt.Errorf("undelete %q: not a path inside the filesystem", p)
		}
	}
	return d.cfg.Queue.Undelete(d.root, d.fence, req)
}

func (d *DM) Session(context.Context) SessionInfo {
	space := d.monitor.Status()
	info := SessionInfo{Owner: d.cfg.Owner, Epoch: d.cfg.Epoch, State: "active", Workers: d.cfg.Settings.Workers,
		PendingEvents: d.session.Pending(), PendingDestroy: d.cfg.Queue.Pending(), Space: &space,
		LastReconcile: d.lastReconcile.Load(), LastScrub: d.lastScrub.Load(), Rates: &Rates{
			Recall: d.recall.Throttle.Rate(), RecallLimit: d.recall.Throttle.Limit(),
			Migrate: d.migrator.Throttle.Rate(), MigrateLimit: d.migrator.Throttle.Limit()}}
	if c := d.recall.CopyStats(); c.Copies > 1 {
		info.Copies = &c
	}
	return info
}

// SetRates changes the transfer caps (after `cascadefs fs set`).
func (d *DM) SetRates(recall, migrate int64) {
	d.recall.Throttle.SetLimit(recall)
	d.migrator.Throttle.SetLimit(migrate)
}

// Scrub reads the archive's copies of the files under opt.Paths back and
// checks them; one run at a time.
func (d *DM) Scrub(ctx context.Context, opt scrub.Options, progress func(scrub.Report)) (*scrub.Report, error) {
	ctx, done, err := d.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	if !d.scrubbing.TryLock() {
		return nil, fmt.Errorf("a scrub of %s is already running", d.cfg.Name)
	}
	defer d.scrubbing.Unlock()
	s := &scrub.Scrubber{Root: d.root, Arch: d.arch, Fence: d.fence, Log: d.log.With("fs", d.cfg.Name)}
	d.log.Info("scrub started", "fs", d.cfg.Name, "paths", opt.Paths, "repair", opt.Repair, "rate", opt.Rate, "after", opt.After)
	rep, err := s.Run(ctx, opt, progress)
	if rep != nil {
		d.log.Info("scrub done", "fs", d.cfg.Name, "files", rep.Files, "objects", rep.Objects, "bytes", rep.Bytes,
			"bad", rep.BadCount, "repaired", rep.Repaired, "complete", rep.Complete, "last", rep.Last, "seconds", rep.Duration.Seconds())
		summary := *rep
		summary.Bad = nil
		d.lastScrub.Store(&summary)
	}
	return rep, err
}

// Reconcile runs a reconcile of the filesystem; one at a time.
func (d *DM) Reconcile(ctx context.Context, opt migrate.ReconcileOptions, progress func(migrate.ReconcileProgress)) (*migrate.ReconcileReport, error) {
	ctx, done, err := d.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	if !d.reconciling.TryLock() {
		return nil, fmt.Errorf("a reconcile of %s is already running", d.cfg.Name)
	}
	defer d.reconciling.Unlock()
	r := &migrate.Reconciler{FS: d.cfg.Name, Root: d.root, Arch: d.arch, Fence: d.fence, Queued: d.cfg.Queue.Keys}
	d.log.Info("reconcile started", "fs", d.cfg.Name, "dry_run", opt.DryRun, "grace", opt.Grace)
	rep, err := r.Run(ctx, opt, progress)
	if rep != nil {
		d.log.Info("reconcile done", "fs", d.cfg.Name, "files", rep.Files, "stubs", rep.Stubs, "objects", rep.Objects,
			"orphans", rep.OrphanCount, "deleted", rep.Deleted, "damaged", rep.DamagedCount, "seconds", rep.Duration.Seconds())
		for _, dmg := range rep.Damaged {
			d.log.Error("damaged stub: its archive copy cannot give its data back", "fs", d.cfg.Name, "file", dmg.Path, "key", dmg.Key, "problem", dmg.Problem)
		}
		summary := *rep
		summary.Orphans, summary.Damaged = nil, nil
		d.lastReconcile.Store(&summary)
		m := d.cfg.Metrics
		m.Add(metrics.ReconcileRuns, 1, "fs", d.cfg.Name)
		m.Add(metrics.ReconcileDeleted, float64(rep.Deleted), "fs", d.cfg.Name)
		m.Set(metrics.ReconcileOrphans, float64(rep.OrphanCount-rep.Deleted), "fs", d.cfg.Name)
		m.Set(metrics.ReconcileDamaged, float64(rep.DamagedCount), "fs", d.cfg.Name)
	}
	if err != nil {
		d.log.Warn("reconcile stopped", "fs", d.cfg.Name, "reason", err)
	}
	return rep, err
}

func (d *DM) Space(ctx context.Context, need int64) (dmapi.Space, error) {
	if need <= 0 {
		return d.monitor.Space(), nil
	}
	ctx, done, err := d.enter(ctx)
	if err != nil {
		return dmapi.Space{}, err
	}
	defer done()
	return d.monitor.OutOfSpace(ctx, need)
}

// SetPolicy changes the space monitor's policy, and the leader a release keeps.
func (d *DM) SetPolicy(p migrate.Policy) {
	d.migrator.SetLeader(p.Leader)
	d.monitor.SetPolicy(p)
}

// Stuck reports DM workers that finished no event for longer than after
// although events wait, or a space monitor cycle that finished no file.
func (d *DM) Stuck(after time.Duration) bool {
	return d.session.Stuck(after) || d.monitor.Stuck(after)
}

// Close stops the DM application; queued DESTROY events stay stored.
func (d *DM) Close() {
	d.callMu.Lock()
	d.closed = true
	d.callMu.Unlock()
	d.cancel() // first: no commit from here on, calls in flight end
	d.waitCalls()
	d.monitor.Close() // a cycle stops between files
	d.cfg.Queue.Stop()
	// The locker locks in this session's archive; the next sets its own.
	d.cfg.Queue.SetLocker(nil)
	d.recall.Close() // first: streams stuck on the archive end, so handlers can
	d.session.Close()
	d.root.Close()
}

// closeWait bounds how long Close waits for calls in flight: one may be
// waiting on a file's right that a stopped peer holds. Past it they run
// on, but commit nothing (the fence refuses them).
const closeWait = 5 * time.Second

// waitCalls waits for the calls in flight to end, at most closeWait.
func (d *DM) waitCalls() {
	ended := make(chan struct{})
	go func() { d.calls.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(closeWait):
		d.log.Warn("DM session closed with calls still running; they commit nothing", "fs", d.cfg.Name)
	}
}

// Router is the DMAccess of a single-node mount, whose DM application
// starts just after the mount: calls in between wait for it. Set is called
// once; the closed channel publishes dm to every reader.
type Router struct {
	once  sync.Once
	ready chan struct{}
	dm    DMAccess
}

func (r *Router) readyCh() chan struct{} {
	r.once.Do(func() { r.ready = make(chan struct{}) })
	return r.ready
}

// Set points the router at dm; call it once.
func (r *Router) Set(dm DMAccess) {
	r.dm = dm
	close(r.readyCh())
}

// routerWait bounds how long a call waits for the DM application to start.
const routerWait = 30 * time.Second

func (r *Router) get(ctx context.Context) (DMAccess, error) {
	select {
	case <-r.readyCh():
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(routerWait):
		return nil, fmt.Errorf("no DM session for this filesystem")
	}
	return r.dm, nil
}

func (r *Router) Raise(ctx context.Context, ev *dmapi.Event) error {
	dm, err := r.get(ctx)
	if err != nil {
		return err
	}
	return dm.Raise(ctx, ev)
}

func (r *Router) Migrate(ctx context.Context, rel string, ino uint64, premigrate bool) (migrate.Result, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return migrate.Result{Path: rel}, err
	}
	return dm.Migrate(ctx, rel, ino, premigrate)
}

func (r *Router) Space(ctx context.Context, need int64) (dmapi.Space, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return dmapi.Space{}, err
	}
	return dm.Space(ctx, need)
}

func (r *Router) Cancel(ctx context.Context, req CancelRequest) ([]dmapi.Event, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return nil, err
	}
	return dm.Cancel(ctx, req)
}

func (r *Router) Reconcile(ctx context.Context, opt migrate.ReconcileOptions, progress func(migrate.ReconcileProgress)) (*migrate.ReconcileReport, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return nil, err
	}
	return dm.Reconcile(ctx, opt, progress)
}

func (r *Router) Scrub(ctx context.Context, opt scrub.Options, progress func(scrub.Report)) (*scrub.Report, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return nil, err
	}
	return dm.Scrub(ctx, opt, progress)
}

func (r *Router) Import(ctx context.Context, req migrate.ImportRequest, progress func(migrate.ImportReport)) (*migrate.ImportReport, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return nil, err
	}
	return dm.Import(ctx, req, progress)
}

func (r *Router) Undelete(ctx context.Context, req migrate.UndeleteRequest) (migrate.KeptVersion, error) {
	dm, err := r.get(ctx)
	if err != nil {
		return migrate.KeptVersion{}, err
	}
	return dm.Undelete(ctx, req)
}

func (r *Router) Session(ctx context.Context) SessionInfo {
	dm, err := r.get(ctx)
	if err != nil {
		return SessionInfo{State: err.Error()}
	}
	return dm.Session(ctx)
}
