package main

import (
	"context"
	"flag"
	"fmt"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/settings"
)

func cmdMount(args []string) error {
	fl := newFlags("mount", "--backing DIR --archive URL [--name FS] MOUNTPOINT")
	var cfg daemon.Config
	fl.StringVar(&cfg.Backing, "backing", "", "backing directory (required)")
	fl.Var((*archiveFlag)(&cfg.ArchiveURL), "archive", "archive URL: s3://BUCKET[/PREFIX]?endpoint=HOST:PORT or file:///DIR (required; again for each further copy)")
	fl.StringVar(&cfg.Name, "name", "", "filesystem name (default: the mountpoint's base name)")
	fl.StringVar(&cfg.StateDir, "state-dir", "", "durable DM state (default /var/lib/cascadefs/NAME)")
	fl.BoolVar(&cfg.NoPassthrough, "no-passthrough", false, "never open resident files in kernel passthrough")
	fl.BoolVar(&cfg.Debug, "debug", false, "log every FUSE request")
	fl.BoolVar(&cfg.AllowUserBacking, "allow-user-backing", false, allowUserBackingHelp)
	fl.StringVar(&cfg.MetricsAddr, "metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics")
	logging := addLogFlags(fl)
	// The filesystem's settings, spelled and checked as in `cascadefs fs
	// set` (package settings); the cluster's own are not for one node.
	var keys []string
	for _, k := range settings.Keys() {
		if k != "failover" && k != "hold-lease" {
			keys = append(keys, k)
			fl.String(k, "", settings.Help(k))
		}
	}
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	given := map[string]string{}
	fl.Visit(func(f *flag.Flag) {
		if slices.Contains(keys, f.Name) {
			given[f.Name] = f.Value.String()
		}
	})
	var err error
	if cfg.Settings, err = settings.Parse(given); err != nil {
		return err
	}
	if fl.NArg() != 1 || cfg.Backing == "" || cfg.ArchiveURL == "" {
		fl.Usage()
		return fmt.Errorf("need --backing, --archive and one MOUNTPOINT")
	}
	mp, err := filepath.Abs(fl.Arg(0))
	if err != nil {
		return err
	}
	cfg.Mountpoint = mp
	if cfg.Name == "" {
		cfg.Name = filepath.Base(mp)
	}
	log, err := newLogger(logging)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dm, err := daemon.Start(ctx, cfg, given, log)
	if err != nil {
		return err
	}
	unmounted := make(chan struct{})
	go func() { dm.Wait(); close(unmounted) }()
	select {
	case <-ctx.Done():
		log.Info("signal received; unmounting", "fs", cfg.Name)
	case <-unmounted:
		log.Warn("unmounted from outside", "fs", cfg.Name)
	}
	dm.Stop()
	return nil
}

const allowUserBackingHelp = "mount a backing directory that users other than root can reach (unsafe: see docs/DEPLOY.md)"

// archiveFlag collects --archive given once per copy into an archive
// spec (package archive: URLs separated by spaces, the first read first).
type archiveFlag string

func (a *archiveFlag) String() string { return string(*a) }

func (a *archiveFlag) Set(v string) error {
	if strings.ContainsAny(v, " \t\n") {
		return fmt.Errorf("%q: an archive URL has no spaces (give --archive once per copy)", v)
	}
	*a = archiveFlag(archive.Spec(append(archive.URLs(string(*a)), v)))
	return nil
}
