// Package cluster makes a node daemon a member of a cascadefs cluster: it
// joins the Serf membership, mounts every filesystem it is a candidate for,
// runs the DM session of those it owns, and serves and sends DM events,
// migrations and release holds over the signed node RPC. The repository
// (package repo) holds the shared configuration and ownership.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/cluster/owner"
	"github.com/cascadefs/cascadefs/cluster/rpc"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/cascadefs/cascadefs/stub"
)

// Config of a node daemon.
type Config struct {
	Name      string
	Bind      string   // Serf gossip HOST:PORT
	RPC       string   // node RPC HOST:PORT
	Join      []string // members to join at start
	RepoDir   string   // repository: a directory (bbolt, shared storage) or etcd://HOST:PORT,...
	MountRoot string   // filesystems are mounted at MountRoot/NAME
	Key       []byte   // cluster key (required): encrypts gossip, signs the node RPC
	RunDir    string   // control sockets (default daemon.RunDir())
	// NoPassthrough disables kernel passthrough for resident files.
	NoPassthrough bool
	// AllowUserBacking mounts backing directories that users other than
	// root can reach (refused otherwise; see daemon.CheckPrivate).
	AllowUserBacking bool
	// Gossip is the timing of failure detection (member.DefaultTiming
	// if zero).
	Gossip member.Timing
	// Metrics: serve Prometheus metrics at http://Metrics/metrics ("": off).
	Metrics string
	// MaxFilesystems bounds the sessions this node takes (0: no bound).
	MaxFilesystems int
	// Weight biases this node's priority key in synchronous votes.
	Weight float64
	// Lease is the TTL of this node's lease (DefaultLease if zero): nobody
	// takes its filesystems while it renews, and it stops acting when it
	// cannot renew (see ownership.go).
	Lease time.Duration
	// StuckAfter: DM workers that finish no event for this long while
	// events wait are restarted once, then the filesystem is given up
	// (DefaultStuckAfter if zero).
	StuckAfter time.Duration
}

// The defaults of a node's timing; `cascadefs node` shows them with its
// flags.
const (
	// DefaultLease: a node's filesystems are taken about this long after
	// it stopped renewing (and it stops acting before that).
	DefaultLease = 5 * time.Second
	// DefaultStuckAfter: longer than any one event should take (a recall
	// of a large file streams; an event is a region).
	DefaultStuckAfter = 5 * time.Minute
)

// reconcileEvery: how often a node compares its mounts and sessions with
// the repository (also on every membership change).
const reconcileEvery = 2 * time.Second

// Node is a running node daemon.
type Node struct {
	cfg    Config
	log    *slog.Logger
	repo   repo.Repository
	member *member.Member
	// gossiping is member once started, for the RPC server's accept
	// loop (which starts first): its members' addresses are trusted.
	gossiping atomic.Pointer[member.Member]
	server    *rpc.Server
	client    *rpc.Client
	holds     holds

	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}
	// wg: every goroutine of the node (spawn); Stop waits for them.
	wg       sync.WaitGroup
	spawnMu  sync.Mutex
	stopping bool

	mu      sync.Mutex
	fss     map[string]*mounted
	control *daemon.ControlServer

	failMu    sync.Mutex
	failQueue []failoverReq
	failWake  chan struct{}
	declined  map[string]string    // fs -> why this node did not take it (failover loop only)
	gaveUp    map[string]time.Time // fs -> when this node gave it up (guarded by mu)

	// own holds the lease and every ownership decision (package owner).
	own *owner.State
	// lapse stops the sessions when the lease runs out without a renewal.
	lapseMu sync.Mutex
	lapse   *time.Timer
	// reconcileMu: one reconcile at a time (the loop's, and the first).
	reconcileMu sync.Mutex

	metrics   *metrics.Registry // nil when not served
	metricsLn net.Listener
}

// Start starts a node: checks its name, joins the cluster and mounts its
// filesystems. Any error leaves nothing running.
func Start(cfg Config, log *slog.Logger) (_ *Node, err error) {
	if err := repo.ValidName("node", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.RunDir == "" {
		cfg.RunDir = daemon.RunDir()
	}
	if cfg.MountRoot == "" || !filepath.IsAbs(cfg.MountRoot) {
		return nil, fmt.Errorf("--mount-root %q: give an absolute directory", cfg.MountRoot)
	}
	if !repo.IsEtcd(cfg.RepoDir) {
		if cfg.RepoDir, err = filepath.Abs(cfg.RepoDir); err != nil {
			return nil, err
		}
	}
	r, err := repo.OpenURL(cfg.RepoDir, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if len(cfg.Key) == 0 {
		return nil, errors.New("no cluster key: gossip and the node RPC must be protected (--key-file)")
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	// A holder of a file's right stopped for twice the lease has lost its
	// lease long ago: a writer waiting for the right ends it.
	stub.SetStoppedHolderPolicy(stub.StoppedHolderPolicy{Grace: 2 * cfg.Lease, Log: log})
	if cfg.StuckAfter <= 0 {
		cfg.StuckAfter = DefaultStuckAfter
	}
	n := &Node{cfg: cfg, log: log.With("node", cfg.Name), repo: r, fss: map[string]*mounted{},
		wake: make(chan struct{}, 1), failWake: make(chan struct{}, 1), declined: map[string]string{}, gaveUp: map[string]time.Time{},
		own: owner.New(cfg.Name, cfg.Lease, now())}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	key := rpc.NewKey(cfg.Key)
	n.client = rpc.NewClient(cfg.Name, key)
	if err := n.checkNameFree(); err != nil {
		return nil, err
	}
	lim := rpc.DefaultLimits()
	lim.Trusted = n.isMemberIP
	if n.server, err = rpc.ListenLimited(cfg.RPC, cfg.Name, key, n.log, lim); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.server.Close()
		}
	}()
	if err := n.serveMetrics(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && n.metricsLn != nil {
			n.metricsLn.Close()
		}
	}()
	n.register()
	n.member, err = member.Start(member.Config{Name: cfg.Name, Bind: cfg.Bind, RPC: n.server.Addr(), Key: cfg.Key,
		Log: n.log, Timing: cfg.Gossip, OnChange: n.kick, OnMember: n.onMember,
		OnQuery: n.onQuery,
		OnUserEvent: func(name string, payload []byte) {
			if name == userEventFailover && string(payload) != cfg.Name {
				n.log.Info("active failover request", "from", string(payload))
				n.kick() // what it gave up has no owner now: take it if eligible
			}
		}})
	if err != nil {
		return nil, err
	}
	n.gossiping.Store(n.member)
	if err := n.member.Join(cfg.Join); err != nil {
		n.member.Shutdown()
		return nil, err
	}
	if err := r.PutNode(context.Background(), repo.Node{Name: cfg.Name, Bind: cfg.Bind, RPC: n.server.Addr(), Seen: time.Now()}); err != nil {
		n.member.Leave()
		return nil, err
	}
	if n.control, err = startNodeControl(n); err != nil {
		n.member.Leave()
		return nil, err
	}
	if err := n.renewLease(); err != nil {
		n.control.Close()
		n.member.Leave()
		return nil, fmt.Errorf("lease: %w", err)
	}
	// Renewals first: the first reconcile may take long (an archive
	// check of up to 15 s per filesystem), and the lease must not lapse
	// meanwhile.
	n.wg.Add(4)
	go n.leaseLoop()
	n.reconcile()
	go n.loop()
	go n.failoverLoop()
	go n.watchdog()
	n.log.Info("node started", "bind", cfg.Bind, "rpc", n.server.Addr(), "repo", cfg.RepoDir, "mount_root", cfg.MountRoot)
	return n, nil
}

// checkNameFree refuses a name that a live node uses already.
func (n *Node) checkNameFree() error {
	nodes, err := n.repo.ListNodes(n.ctx)
	if err != nil {
		return err
	}
	for _, other := range nodes {
		if other.Name != n.cfg.Name || other.RPC == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
		var reply pingReply
		err := n.client.Call(ctx, other.Name, other.RPC, pathPing, struct{}{}, &reply)
		cancel()
		if err == nil && reply.Name == n.cfg.Name {
			return fmt.Errorf("node name %s is taken by a live node (RPC %s)", n.cfg.Name, other.RPC)
		}
	}
	return nil
}

func (n *Node) kick() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *Node) loop() { n.every(reconcileEvery, n.wake, n.reconcile) }

// every runs fn at each tick of period and at each wake (nil: ticks
// only) until the node stops.
func (n *Node) every(period time.Duration, wake <-chan struct{}, fn func()) {
	defer n.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		fn()
	}
}

// reconcile brings mounts and sessions in line with the repository: mount
// what this node is a candidate for, then do what the ownership state
// plans (take a filesystem nobody owns, queue takeovers, claim a fresh
// epoch, start or stop sessions, give up in a minority). No lock of the
// node is held across a repository call, a mount or an unmount.
func (n *Node) reconcile() {
	n.reconcileMu.Lock()
	defer n.reconcileMu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	list, err := n.repo.ListFS(n.ctx)
	if err != nil {
		n.log.Warn("repository unreadable; keeping the current state", "reason", err)
		return
	}
	quorate, why, live := n.quorum()
	n.syncMounts(list)
	plan := n.own.Plan(owner.View{Now: now(), FS: list, Quorate: quorate, Why: why, Live: live,
		Dead: n.ownerDead, Ineligible: n.ineligible,
		Healthy: func(name string) bool { m := n.lookup(name); return m != nil && m.unhealthy() == "" },
		Running: func(name string) (uint64, bool) {
			if m := n.lookup(name); m != nil {
				return m.runningEpoch()
			}
			return 0, false
		}})
	for _, a := range plan {
		n.carryOut(a)
	}
}

// syncMounts mounts every filesystem this node is a candidate for and
// unmounts the others.
func (n *Node) syncMounts(list []repo.FS) {
	want := map[string]repo.FS{}
	for _, fs := range list {
		if fs.IsCandidate(n.cfg.Name) {
			want[fs.Name] = fs
		}
	}
	n.mu.Lock()
	var gone []*mounted
	for name, m := range n.fss {
		if _, ok := want[name]; !ok {
			gone = append(gone, m)
			delete(n.fss, name)
		}
	}
	n.mu.Unlock()
	for _, m := range gone {
		n.log.Info("filesystem no longer served here", "fs", m.name)
		m.stop(false)
	}
	for name, fs := range want {
		if m := n.lookup(name); m != nil {
			m.setConf(fs)
			if !m.refreshSettings(fs) && m.archiveChanged(fs) {
				// fs set --archive: the session starts again with the
				// new copies (the next plan starts it, at this epoch).
				m.stopDM("the archive's copies changed")
				n.kick()
			}
			continue
		}
		m, err := n.mountFS(fs)
		if err != nil {
			n.log.Error("cannot mount filesystem", "fs", name, "reason", err)
			if fs.Owner == n.cfg.Name { // cannot serve what it owns: let the others take it
				n.mu.Lock()
				n.gaveUp[name] = time.Now()
				n.mu.Unlock()
				why := n.cfg.Name + " cannot mount it: " + err.Error()
				n.spawn(func() { n.handOverByName(name, why) })
			}
			continue
		}
		n.mu.Lock()
		n.fss[name] = m
		n.mu.Unlock()
	}
}

// carryOut does one planned step.
func (n *Node) carryOut(a owner.Action) {
	name := a.FS.Name
	m := n.lookup(name)
	switch a.Kind {
	case owner.TakeOver:
		n.requestFailover(a.From, a.Why)
	case owner.Take, owner.ClaimEpoch:
		from := ""
		if a.Kind == owner.ClaimEpoch {
			from = n.cfg.Name
		}
		got, err := n.claim(name, from, a.Why)
		if err != nil {
			n.log.Warn("cannot claim filesystem", "fs", name, "reason", err)
			return
		}
		if got == nil || m == nil {
			return // another node was first
		}
		if a.Kind == owner.Take {
			n.log.Info("took filesystem", "fs", name, "epoch", got.Epoch)
		}
		m.setConf(*got)
		n.startSession(m, *got)
	case owner.Start:
		if m != nil {
			n.startSession(m, a.FS)
		}
	case owner.Stop:
		if m != nil && m.currentDM() != nil {
			n.log.Warn("replaced: stopping the session here", "fs", name, "owner", a.FS.Owner, "epoch", a.FS.Epoch, "reason", a.Why)
			m.stopDM(a.Why)
		}
	case owner.GiveUp:
		if m != nil {
			m.stopDM(a.Why)
		}
		n.log.Error("minority: giving the filesystem up", "fs", name, "because", a.Why)
		n.spawn(func() { n.move(name, a.FS.Epoch, "", "given up: "+n.cfg.Name+" "+a.Why) })
	}
}

// startSession starts fs's session (at an epoch this process claimed);
// a session that cannot start gives the filesystem up to the others.
func (n *Node) startSession(m *mounted, fs repo.FS) {
	switch err := m.ensureDM(fs); {
	case errors.Is(err, errLapsedSinceClaim):
		n.log.Warn("DM session not started: the lease lapsed meanwhile", "fs", fs.Name)
		n.kick() // the next reconcile claims a new epoch
	case err != nil:
		n.log.Error("cannot start DM session", "fs", fs.Name, "reason", err)
		n.giveUp(m, "its DM session cannot start: "+err.Error())
	}
}

// spawn runs fn on a goroutine that Stop waits for; once the node stops,
// nothing more (Stop hands every filesystem over itself).
func (n *Node) spawn(fn func()) {
	n.spawnMu.Lock()
	defer n.spawnMu.Unlock()
	if n.stopping {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
}

// Stop hands the filesystems this node owns back to the repository (no
// owner: another candidate takes them at once), unmounts, and leaves.
func (n *Node) Stop() {
	n.spawnMu.Lock()
	n.stopping = true
	n.spawnMu.Unlock()
	n.cancel()
	n.wg.Wait()
	// Not under n.mu: stopping a mount waits for its change queue, whose
	// sends look the mount up (a deadlock that hung SIGTERM while files
	// were being closed).
	n.mu.Lock()
	fss := maps.Clone(n.fss)
	n.mu.Unlock()
	for name, m := range fss {
		m.stop(true)
		n.mu.Lock()
		delete(n.fss, name)
		n.mu.Unlock()
	}
	n.control.Close()
	// What it owned is handed over: its lease ends now, not a TTL later.
	if err := n.repo.DropLease(context.Background(), n.cfg.Name); err != nil {
		n.log.Warn("lease not dropped; it lapses by itself", "reason", err)
	}
	n.member.Leave()
	n.server.Close()
	if n.metricsLn != nil {
		n.metricsLn.Close()
	}
	n.repo.Close()
	n.log.Info("node stopped")
}

// serveMetrics starts the Prometheus endpoint, if configured. The gauges
// of the filesystems this node owns are read at each scrape.
func (n *Node) serveMetrics() error {
	if n.cfg.Metrics == "" {
		return nil
	}
	n.metrics = metrics.NewNode()
	n.metrics.OnCollect(func(r *metrics.Registry) {
		for _, g := range metrics.OwnerGauges {
			r.Forget(g)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, m := range n.fss {
			if dm := m.currentDM(); dm != nil {
				dm.Gauges(r)
			}
		}
	})
	ln, err := metrics.Serve(n.cfg.Metrics, n.metrics)
	if err != nil {
		return err
	}
	n.metricsLn = ln
	n.log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	return nil
}

// Wait blocks until the node is stopped.
func (n *Node) Wait() { <-n.ctx.Done() }

// alive reports whether a member is up (for the DESTROY queue).
func (n *Node) alive(name string) bool {
	i, ok := n.member.Lookup(name)
	return ok && (i.Status == member.Alive || i.Status == member.Suspect)
}

// ownerDead reports a filesystem owner that gossip says failed or left,
// or that is no member at all and does not answer its RPC address.
func (n *Node) ownerDead(name string) bool {
	if i, ok := n.member.Lookup(name); ok {
		return i.Status == member.Failed || i.Status == member.Left
	}
	addr := n.rpcAddr(name)
	if addr == "" {
		return true
	}
	ctx, cancel := context.WithTimeout(n.ctx, time.Second)
	defer cancel()
	var reply pingReply
	return n.client.Call(ctx, name, addr, pathPing, struct{}{}, &reply) != nil || reply.Name != name
}

// rpcAddr is the RPC address of a node: from gossip, else the repository.
func (n *Node) rpcAddr(name string) string {
	if i, ok := n.member.Lookup(name); ok && i.RPC != "" {
		return i.RPC
	}
	nodes, _ := n.repo.ListNodes(context.Background())
	for _, x := range nodes {
		if x.Name == name {
			return x.RPC
		}
	}
	return ""
}

// peers lists the other members that mount a filesystem: its candidates
// that have not left the cluster.
func (n *Node) peers(fs repo.FS) []member.Info {
	var out []member.Info
	for _, i := range n.member.Members() {
		if i.Name == n.cfg.Name || i.Status == member.Left || !fs.IsCandidate(i.Name) {
			continue
		}
		out = append(out, i)
	}
	return out
}

func (n *Node) lookup(fs string) *mounted {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fss[fs]
}

// mkdirMount makes the mount point, first detaching a dead mount that a
// killed node left there.
func mkdirMount(root, name, runDir string) (string, error) {
	p := filepath.Join(root, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		if cerr := daemon.CleanDeadMount(p, runDir); cerr != nil {
			return "", cerr
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return "", fmt.Errorf("mount point: %w", err)
		}
	}
	return p, nil
}

// isMemberIP says whether ip is the gossip address of a cluster member
// (gossip is encrypted with the cluster key): the node RPC server holds
// connections from members apart from the limits on everyone else.
func (n *Node) isMemberIP(ip net.IP) bool {
	m := n.gossiping.Load()
	if m == nil || ip == nil {
		return false
	}
	for _, i := range m.Members() {
		host, _, err := net.SplitHostPort(i.Addr)
		if err == nil && net.ParseIP(host).Equal(ip) {
			return true
		}
	}
	return false
}
