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
	"github.com/cascadefs/cascadefs/cluster/rpc"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/hashicorp/memberlist"
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
	// Tune adjusts memberlist timing (failure detection).
	Tune func(*memberlist.Config)
	// Metrics: serve Prometheus metrics at http://Metrics/metrics ("": off).
	Metrics string
	// MaxFilesystems bounds the sessions this node takes (0: no bound).
	MaxFilesystems int
	// Weight biases this node's priority key in synchronous votes.
	Weight float64
	// Lease is the TTL of this node's lease (DefaultLease if 0): nobody
	// takes its filesystems while it renews, and it stops acting when it
	// cannot renew (see ownership.go).
	Lease time.Duration
	// StuckAfter: DM workers that finish no event for this long while
	// events wait are restarted once, then the filesystem is given up.
	StuckAfter time.Duration
}

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
	wg     sync.WaitGroup

	mu      sync.Mutex
	fss     map[string]*mounted
	control *daemon.ControlServer

	failMu    sync.Mutex
	failQueue []failoverReq
	failWake  chan struct{}
	declined  map[string]string    // fs -> why this node did not take it (failover loop only)
	gaveUp    map[string]time.Time // fs -> when this node gave it up (guarded by mu)

	lease   leaseKeeper
	epochMu sync.Mutex
	epochs  map[string]claim // fs -> the epoch this process claimed last
	started time.Time
	// minoritySince: since when every look at the quorum found this node
	// in a minority (zero while it has one); guarded by lease.mu.
	minoritySince time.Time

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
	r, err := repo.OpenURL(cfg.RepoDir)
	if err != nil {
		return nil, err
	}
	if len(cfg.Key) == 0 {
		return nil, errors.New("no cluster key: gossip and the node RPC must be protected (--key-file)")
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.StuckAfter <= 0 {
		cfg.StuckAfter = 5 * time.Minute
	}
	n := &Node{cfg: cfg, log: log.With("node", cfg.Name), repo: r, fss: map[string]*mounted{},
		wake: make(chan struct{}, 1), failWake: make(chan struct{}, 1), declined: map[string]string{}, gaveUp: map[string]time.Time{}, epochs: map[string]claim{}}
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
		Log: n.log, Tune: cfg.Tune, OnChange: n.kick, OnMember: n.onMember,
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
	if err := r.PutNode(repo.Node{Name: cfg.Name, Bind: cfg.Bind, RPC: n.server.Addr(), Seen: time.Now()}); err != nil {
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
	n.started = time.Now()
	n.reconcile()
	n.wg.Add(4)
	go n.leaseLoop()
	go n.loop()
	go n.failoverLoop()
	go n.watchdog()
	n.log.Info("node started", "bind", cfg.Bind, "rpc", n.server.Addr(), "repo", cfg.RepoDir, "mount_root", cfg.MountRoot)
	return n, nil
}

// checkNameFree refuses a name that a live node uses already.
func (n *Node) checkNameFree() error {
	nodes, err := n.repo.ListNodes()
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
// what this node is a candidate for, take a filesystem nobody owns, run the
// session of what it owns and stop the session of what it no longer owns.
func (n *Node) reconcile() {
	list, err := n.repo.ListFS()
	if err != nil {
		n.log.Warn("repository unreadable; keeping the current state", "reason", err)
		return
	}
	quorate, why, leases := n.quorum()
	// A node gives up what it owns only after a whole lease in a minority
	// (see quorum); just after its start it may not have heard from all
	// its peers yet.
	settling := time.Since(n.started) < n.cfg.Lease || n.minorityFor() < n.cfg.Lease
	want := map[string]repo.FS{}
	for _, fs := range list {
		if fs.IsCandidate(n.cfg.Name) {
			want[fs.Name] = fs
			if fs.Owner != "" && fs.Owner != n.cfg.Name && quorate && (!leases[fs.Owner] || n.ownerDead(fs.Owner)) {
				n.requestFailover(fs.Owner, "owner "+fs.Owner+" is gone")
			}
		}
	}
	type start struct {
		m  *mounted
		fs repo.FS
	}
	var starts []start
	defer func() {
		// Sessions start outside the lock: opening the archive may take a while.
		for _, s := range starts {
			fs, err := n.renewEpoch(s.fs)
			if err != nil {
				n.log.Warn("cannot renew the epoch of an owned filesystem", "fs", fs.Name, "reason", err)
				continue
			}
			s.m.setConf(fs)
			if err := s.m.ensureDM(fs); errors.Is(err, errLapsedSinceClaim) {
				n.log.Warn("DM session not started: the lease lapsed meanwhile", "fs", s.fs.Name)
			} else if err != nil {
				n.log.Error("cannot start DM session", "fs", s.fs.Name, "reason", err)
				n.giveUp(s.m, "its DM session cannot start: "+err.Error())
			}
		}
	}()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	for name, m := range n.fss {
		if _, ok := want[name]; !ok {
			n.log.Info("filesystem no longer served here", "fs", name)
			m.stop(false)
			delete(n.fss, name)
		}
	}
	for name, fs := range want {
		m := n.fss[name]
		if m == nil {
			var err error
			if m, err = n.mountFS(fs); err != nil {
				n.log.Error("cannot mount filesystem", "fs", name, "reason", err)
				if fs.Owner == n.cfg.Name { // cannot serve what it owns: let the others take it
					n.gaveUp[name] = time.Now()
					go n.handOverByName(name, n.cfg.Name+" cannot mount it: "+err.Error())
				}
				continue
			}
			n.fss[name] = m
		}
		if !quorate && !settling && fs.Owner == n.cfg.Name {
			// Cut off from most of the cluster: give it up to those who
			// can reach each other (they take it at once: no lease wait).
			m.stopDM("minority: " + why)
			n.log.Error("minority: giving the filesystem up", "fs", name, "because", why)
			go n.move(name, fs.Epoch, "", "given up: "+n.cfg.Name+" "+why)
			continue
		}
		if fs.Owner == "" && quorate && n.ineligibleLocked(fs) == "" {
			if taken, err := n.take(name); err != nil {
				n.log.Warn("cannot take filesystem", "fs", name, "reason", err)
			} else if taken != nil {
				fs = *taken
			}
		}
		m.setConf(fs)
		if fs.Owner == n.cfg.Name && m.unhealthy() == "" && n.leaseValid() && quorate {
			starts = append(starts, start{m, fs})
		} else if fs.Owner != n.cfg.Name && m.currentDM() != nil {
			n.log.Warn("replaced: another node owns the filesystem now; stopping its session here", "fs", name, "owner", fs.Owner, "epoch", fs.Epoch)
			m.stopDM("owner is now " + fs.Owner)
		}
	}
}

// Stop hands the filesystems this node owns back to the repository (no
// owner: another candidate takes them at once), unmounts, and leaves.
func (n *Node) Stop() {
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
	if err := n.repo.DropLease(n.cfg.Name); err != nil {
		n.log.Warn("lease not dropped; it lapses by itself", "reason", err)
	}
	n.member.Leave()
	n.server.Close()
	if n.metricsLn != nil {
		n.metricsLn.Close()
	}
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
	nodes, _ := n.repo.ListNodes()
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
