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
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	cfs "github.com/cascadefs/cascadefs/fs"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/recall"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Config is one managed filesystem served by this process.
type Config struct {
	Name       string // filesystem name
	Backing    string // backing directory
	Mountpoint string
	ArchiveURL string
	// StateDir keeps the durable DESTROY queue (default /var/lib/cascadefs/NAME).
	StateDir string
	// RunDir holds the control sockets (default RunDir()).
	RunDir        string
	Recall        recall.Config
	Workers       int           // DM session workers (admission control)
	EventTimeout  time.Duration // how long a reader waits for a recall
	ReleaseWait   time.Duration // how long a release waits for open handles
	NoPassthrough bool
	Debug         bool
}

// RunDir is where control sockets live: $CASCADEFS_RUN_DIR or /run/cascadefs.
func RunDir() string {
	if d := os.Getenv("CASCADEFS_RUN_DIR"); d != "" {
		return d
	}
	return "/run/cascadefs"
}

// SocketPath is the control socket of filesystem name.
func SocketPath(runDir, name string) string { return filepath.Join(runDir, name+".sock") }

// Daemon is a running managed filesystem.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	arch     archive.Archive
	fs       *cfs.FS
	session  *dmapi.Session
	recall   *recall.Manager
	migrator *migrate.Migrator
	destroy  *migrate.DestroyQueue
	control  *controlServer
	started  time.Time
}

// Start mounts the filesystem and starts its DM application.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := validName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.RunDir == "" {
		cfg.RunDir = RunDir()
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
	if err := CleanDeadMount(cfg.Mountpoint, cfg.RunDir); err != nil {
		return nil, err
	}
	arch, err := archive.Open(cfg.ArchiveURL)
	if err != nil {
		return nil, err
	}
	checkCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = arch.Check(checkCtx)
	cancel()
	if err != nil {
		return nil, err
	}

	d := &Daemon{cfg: cfg, log: log, arch: arch, started: time.Now()}
	rights := &dmapi.Rights{}
	// The destroy queue hands its events to the session, which the recall
	// manager (needing the queue for stale copies) serves.
	raise := func(ctx context.Context, ev *dmapi.Event) error { return d.session.Raise(ctx, ev) }
	d.destroy, err = migrate.NewDestroyQueue(filepath.Join(cfg.StateDir, "destroy"), cfg.Name, backing, raise, log)
	if err != nil {
		return nil, err
	}
	d.recall = recall.NewManager(backing, arch, rights, d.destroy, cfg.Recall, log)
	d.session = dmapi.NewSession(cfg.Name, dmapi.Config{Workers: cfg.Workers, Timeout: cfg.EventTimeout}, d.recall.Handle, log)
	rc := d.recallConfig()
	d.fs, err = cfs.Mount(cfg.Mountpoint, cfs.Options{
		Backing: backing, Name: cfg.Name, Events: events{d}, Log: log,
		SmallFile: rc.SmallFile, Region: stub.DefaultChunkSize,
		NoPassthrough: cfg.NoPassthrough, Debug: cfg.Debug,
	})
	if err != nil {
		d.stopDM()
		return nil, err
	}
	d.migrator = migrate.New(backing, arch, rights, d.fs, d.destroy, migrate.Config{FS: cfg.Name, ReleaseWait: cfg.ReleaseWait}, log)
	d.destroy.Start()
	if d.control, err = startControl(d); err != nil {
		d.Stop()
		return nil, err
	}
	log.Info("mounted", "fs", cfg.Name, "mountpoint", cfg.Mountpoint, "backing", backing,
		"archive", arch.String(), "passthrough", d.fs.Passthrough())
	return d, nil
}

func (d *Daemon) recallConfig() recall.Config {
	c := d.cfg.Recall
	if c.SmallFile <= 0 {
		c.SmallFile = recall.DefaultConfig().SmallFile
	}
	return c
}

// Wait blocks until the filesystem is unmounted (by Stop or from outside).
func (d *Daemon) Wait() { d.fs.Wait() }

// Stop unmounts and stops the DM application. Queued DESTROY events stay
// on disk for the next start.
func (d *Daemon) Stop() {
	if d.control != nil {
		d.control.close()
	}
	if d.fs != nil {
		for i := 0; ; i++ {
			err := d.fs.Unmount()
			if err == nil {
				break
			}
			if i == 20 {
				d.log.Warn("mount busy; detaching it", "mountpoint", d.cfg.Mountpoint, "reason", err)
				unix.Unmount(d.cfg.Mountpoint, unix.MNT_DETACH)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	d.stopDM()
	d.log.Info("unmounted", "fs", d.cfg.Name, "mountpoint", d.cfg.Mountpoint)
}

func (d *Daemon) stopDM() {
	if d.destroy != nil {
		d.destroy.Stop()
	}
	d.session.Close()
	d.recall.Close()
}

// CleanDeadMount detaches cascadefs mounts at mountpoint that no daemon
// serves any more (left by a kill -9), and refuses a live one. A dead
// mount's root may still stat fine from the attribute cache, so liveness
// is asked of its control socket.
func CleanDeadMount(mountpoint, runDir string) error {
	for range 16 { // killed daemons' mounts may be stacked
		mounts, err := Mounts()
		if err != nil {
			return err
		}
		var top *Mount
		for i := range mounts {
			if mounts[i].Mountpoint == mountpoint {
				top = &mounts[i]
			}
		}
		if top == nil {
			break
		}
		if c, err := net.DialTimeout("unix", SocketPath(runDir, top.Name), time.Second); err == nil {
			c.Close()
			return fmt.Errorf("%s is already mounted and served (filesystem %s)", mountpoint, top.Name)
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

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/ \t\n") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("filesystem name %q: use letters, digits, '-', '_' or '.'", name)
	}
	return nil
}

// events adapts the daemon to the FUSE layer's Events.
type events struct{ d *Daemon }

func (e events) Raise(ctx context.Context, ev *dmapi.Event) error { return e.d.session.Raise(ctx, ev) }

func (e events) Prepare(rel string, ino uint64, key string) (string, error) {
	return e.d.destroy.Prepare(rel, ino, key)
}
func (e events) Commit(token string) { e.d.destroy.Commit(token) }
func (e events) Abort(token string)  { e.d.destroy.Abort(token) }
