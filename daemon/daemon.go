// Package daemon wires one managed filesystem together on a node: the FUSE
// mount, its DM session, the recall workers, migration, the durable
// DESTROY queue and the control socket that the admin commands talk to.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/fusefs"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/metrics"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/namespace"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/settings"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Config is one managed filesystem mounted by this process.
type Config struct {
	Name       string // filesystem name
	Backing    string // backing directory
	Mountpoint string
	ArchiveURL string
	// Source is the mount's source in mountinfo and the name of its control
	// socket: unique on the host (default Name; nodes use NAME@NODE).
	Source string
	// StateDir keeps the single-node repository (default /var/lib/cascadefs/NAME).
	StateDir string
	// RunDir holds the control sockets (default RunDir()).
	RunDir string
	// Settings are the filesystem's settings (package settings): a single
	// node's from its flags, a node's from its repository when it mounted.
	Settings      settings.FS
	NoPassthrough bool
	Debug         bool
	// AllowUserBacking lets the mount start on a backing directory that
	// users other than root can reach (CheckPrivate says why not to).
	AllowUserBacking bool
	// Policy returns the space monitor's current policy (for dry runs and
	// df; Settings.Policy if nil).
	Policy func() migrate.Policy
	// Metrics receives the mount's and DM's metrics (nil: none). A single
	// node serves them at MetricsAddr.
	Metrics     *metrics.Registry
	MetricsAddr string
	// Written and Changed are told of changes through this mount that other
	// nodes' caches must drop (see fs.Options).
	Written func(ino uint64)
	Changed func(fusefs.Change)
}

// RunDir is where control sockets live: $CASCADEFS_RUN_DIR or /run/cascadefs.
func RunDir() string {
	if d := os.Getenv("CASCADEFS_RUN_DIR"); d != "" {
		return d
	}
	return "/run/cascadefs"
}

// SocketPath is the control socket of the mount with the given source.
func SocketPath(runDir, source string) string { return filepath.Join(runDir, source+".sock") }

// Mount is a managed filesystem mounted on this node: the FUSE layer and
// the control socket of the admin commands. Its DM application runs here
// or on another node, behind dm.
type Mount struct {
	cfg     Config
	log     *slog.Logger
	fs      *fusefs.FS
	root    *beneath.Root // the backing tree, for the admin requests
	dm      DMAccess
	archive string // for status, without credentials
	control *ControlServer
	started time.Time
	dev     uint64 // the mount's device number: requests for another are refused
	garbage *migrate.DestroyQueue
	journal *namespace.Journal // this mount's namespace changes, to the archive
}

// StartMount mounts a filesystem whose events go to dm and whose DESTROY
// entries go to garbage.
func StartMount(cfg Config, dm DMAccess, garbage *migrate.DestroyQueue, log *slog.Logger) (*Mount, error) {
	if err := repo.ValidName("filesystem", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.RunDir == "" {
		cfg.RunDir = RunDir()
	}
	if cfg.Source == "" {
		cfg.Source = cfg.Name
	}
	backing, err := filepath.Abs(cfg.Backing)
	if err != nil {
		return nil, err
	}
	cfg.Backing = backing
	if st, err := os.Stat(backing); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("backing directory %s: not a directory", backing)
	}
	if err := checkPlaces(&cfg); err != nil {
		return nil, err
	}
	if err := CleanDeadMount(cfg.Mountpoint, cfg.RunDir); err != nil {
		return nil, err
	}
	root, err := beneath.Open(backing)
	if err != nil {
		return nil, fmt.Errorf("backing directory: %w", err)
	}
	m := &Mount{cfg: cfg, log: log, root: root, dm: dm, archive: cfg.ArchiveURL, started: time.Now(), garbage: garbage}
	var shown []string
	for _, raw := range archive.URLs(cfg.ArchiveURL) {
		if u, err := url.Parse(raw); err == nil {
			u.RawQuery = "" // the endpoint is shown by the DM side; keep the mount line short
			raw = u.String()
		}
		shown = append(shown, raw)
	}
	m.archive = strings.Join(shown, " + ")

	// The journal names files: sealed like the descriptions when a key
	// file is set.
	var keys *seal.Keyring
	if f := cfg.Settings.KeyFile; f != "" {
		if keys, err = seal.Load(f); err != nil {
			root.Close()
			return nil, err
		}
	}
	arch, err := archive.Open(cfg.ArchiveURL)
	if err != nil {
		root.Close()
		return nil, err
	}
	m.journal = namespace.NewJournal(arch, cfg.Name, cfg.Source, keys, log)
	garbage.SetJournal(m.journal)
	m.fs, err = fusefs.Mount(cfg.Mountpoint, fusefs.Options{
		Backing: backing, Name: cfg.Name, Source: cfg.Source, Events: events{dm, garbage}, Log: log,
		SmallFile: cfg.Settings.Recall.SmallFile, Region: stub.DefaultChunkSize,
		NoPassthrough: cfg.NoPassthrough, Debug: cfg.Debug, Written: cfg.Written, Changed: cfg.Changed,
		Renamed: m.journal.Renamed,
		Space:   dm, SpaceWait: cfg.Settings.EventTimeout, Metrics: cfg.Metrics,
	})
	if err != nil {
		m.journal.Close()
		root.Close()
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(cfg.Mountpoint, &st); err != nil { // answered by this process's FUSE server
		m.Stop()
		return nil, fmt.Errorf("mounted, but the mount does not answer: %w", err)
	}
	m.dev = st.Dev
	if m.control, err = startControl(m); err != nil {
		m.Stop()
		return nil, err
	}
	log.Info("mounted", "fs", cfg.Name, "mountpoint", cfg.Mountpoint, "backing", backing, "passthrough", m.fs.Passthrough())
	return m, nil
}

// FS is the FUSE layer (its gates take part in releases).
func (m *Mount) FS() *fusefs.FS { return m.fs }

// Wait blocks until the filesystem is unmounted (by Stop or from outside).
func (m *Mount) Wait() { m.fs.Wait() }

// Stop closes the control socket and unmounts.
func (m *Mount) Stop() {
	if m.control != nil {
		m.control.Close()
	}
	for i := 0; ; i++ {
		err := m.fs.Unmount()
		if err == nil {
			break
		}
		if i == 20 {
			m.log.Warn("mount busy; detaching it", "mountpoint", m.cfg.Mountpoint, "reason", err)
			unix.Unmount(m.cfg.Mountpoint, unix.MNT_DETACH)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.journal.Close() // after the unmount: the last renames are in
	m.root.Close()
	m.log.Info("unmounted", "fs", m.cfg.Name, "mountpoint", m.cfg.Mountpoint)
}

// Daemon is `cascadefs mount`: a cluster of one. Its repository lives in
// the state directory; the DM application runs in the same process.
type Daemon struct {
	*Mount
	dm        *DM
	repo      repo.Repository
	metricsLn net.Listener
}

// localNode names the node of a single-node daemon in its repository.
const localNode = "local"

// Start mounts the filesystem and starts its DM application.
func Start(ctx context.Context, cfg Config, given map[string]string, log *slog.Logger) (*Daemon, error) {
	if err := repo.ValidName("filesystem", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join("/var/lib/cascadefs", cfg.Name)
	}
	backing, err := filepath.Abs(cfg.Backing)
	if err != nil {
		return nil, err
	}
	cfg.Backing = backing
	if st, err := os.Stat(backing); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("backing directory %s: not a directory", backing)
	}
	// Before anything is made (state, archive directory): a layout that
	// is unsafe is refused.
	if err := checkPlaces(&cfg); err != nil {
		return nil, err
	}
	// Fail on an unreachable archive before anything is mounted.
	if _, err := OpenArchive(ctx, cfg.ArchiveURL); err != nil {
		return nil, err
	}
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		cfg.Metrics = metrics.NewNode()
		if metricsLn, err = metrics.Serve(cfg.MetricsAddr, cfg.Metrics); err != nil {
			return nil, err
		}
		log.Info("serving metrics", "addr", "http://"+metricsLn.Addr().String()+"/metrics")
	}
	fail := func(err error) (*Daemon, error) {
		if metricsLn != nil {
			metricsLn.Close()
		}
		return nil, err
	}
	r, err := localRepo(ctx, cfg, given, log)
	if err != nil {
		return fail(err)
	}
	router := &Router{}
	raise := func(ctx context.Context, ev *dmapi.Event) error { return router.Raise(ctx, ev) }
	queue := migrate.NewDestroyQueue(repo.Entries{Repo: r, FS: cfg.Name}, cfg.Name, localNode, backing, raise, nil, log)
	queue.SetRetention(cfg.Settings.Retention)
	mount, err := StartMount(cfg, router, queue, log)
	if err != nil {
		return fail(err)
	}
	dm, err := StartDM(ctx, DMConfig{Name: cfg.Name, Backing: backing, ArchiveURL: cfg.ArchiveURL, Owner: localNode, Epoch: 1,
		Queue: queue, Gate: mount.FS(), Settings: cfg.Settings, Metrics: cfg.Metrics}, log)
	if err != nil {
		mount.Stop()
		return fail(err)
	}
	router.Set(dm)
	mount.archive = dm.Archive()
	cfg.Metrics.OnCollect(dm.Gauges)
	return &Daemon{Mount: mount, dm: dm, repo: r, metricsLn: metricsLn}, nil
}

// localRepo opens (creating) the single-node repository and registers the
// filesystem in it, owned by this node.
func localRepo(ctx context.Context, cfg Config, given map[string]string, log *slog.Logger) (repo.Repository, error) {
	dir := filepath.Join(cfg.StateDir, "repo")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	r, err := repo.Create(dir, log)
	if err != nil {
		return nil, err
	}
	fs := repo.FS{Name: cfg.Name, Backing: cfg.Backing, Archive: cfg.ArchiveURL, Owner: localNode, Epoch: 1}
	if err := r.AddFS(ctx, fs); err != nil && !errors.Is(err, repo.ErrExists) {
		return nil, err
	}
	// The flags of this start are the settings (shown by fs list).
	err = r.UpdateFS(ctx, cfg.Name, func(f *repo.FS) error { f.Settings = given; return nil })
	return r, err
}

// Stop unmounts and stops the DM application. Queued DESTROY events stay
// stored for the next start.
func (d *Daemon) Stop() {
	d.Mount.Stop()
	d.dm.Close()
	d.repo.Close()
	if d.metricsLn != nil {
		d.metricsLn.Close()
	}
}

// CleanDeadMount detaches cascadefs mounts at mountpoint that no daemon
// serves any more (left by a kill -9), and refuses a live one, whichever
// run directory its daemon uses: the kernel tells them apart (mountLive),
// not a control socket.
func CleanDeadMount(mountpoint, runDir string) error {
	for range 16 { // killed daemons' mounts may be stacked
		mounts, err := Mounts()
		if err != nil {
			return err
		}
		var top *MountInfo
		for i := range mounts {
			if mounts[i].Mountpoint == mountpoint {
				top = &mounts[i]
			}
		}
		if top == nil {
			break
		}
		if mountLive(mountpoint) {
			return fmt.Errorf("%s is already mounted and served (filesystem %s); unmount it first", mountpoint, top.Name)
		}
		if err := unix.Unmount(mountpoint, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("clean dead mount %s: %w", mountpoint, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		if errors.Is(err, unix.ENOTCONN) { // a dead mount of another FUSE filesystem
			return fmt.Errorf("mountpoint %s: a dead FUSE mount is in the way (umount -l it)", mountpoint)
		}
		return fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("mountpoint %s: not a directory", mountpoint)
	}
	return nil
}

// events adapts a mount's DM access and DESTROY queue to the FUSE layer.
type events struct {
	dm DMAccess
	dmapi.Garbage
}

func (e events) Raise(ctx context.Context, ev *dmapi.Event) error { return e.dm.Raise(ctx, ev) }
