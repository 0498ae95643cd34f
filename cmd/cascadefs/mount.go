package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/recall"
	"github.com/cascadefs/cascadefs/repo"
)

func cmdMount(args []string) error {
	fl := newFlags("mount", "--backing DIR --archive URL [--name FS] MOUNTPOINT")
	var cfg daemon.Config
	fl.StringVar(&cfg.Backing, "backing", "", "backing directory (required)")
	fl.StringVar(&cfg.ArchiveURL, "archive", "", "archive URL: s3://BUCKET[/PREFIX]?endpoint=HOST:PORT or file:///DIR (required)")
	fl.StringVar(&cfg.Name, "name", "", "filesystem name (default: the mountpoint's base name)")
	fl.StringVar(&cfg.StateDir, "state-dir", "", "durable DM state (default /var/lib/cascadefs/NAME)")
	fl.IntVar(&cfg.Workers, "workers", 8, "DM session workers: recalls handled at once")
	fl.DurationVar(&cfg.EventTimeout, "event-timeout", 10*time.Minute, "how long a reader waits for a recall before EIO")
	fl.DurationVar(&cfg.ReleaseWait, "release-wait", 5*time.Second, "how long a migration waits for open handles before skipping the release (0: not at all)")
	d := recall.DefaultConfig()
	fl.Int64Var(&cfg.Recall.SmallFile, "small-file", d.SmallFile, "stubs up to this many bytes are recalled whole")
	fl.Int64Var(&cfg.Recall.Window, "window", d.Window, "first streaming window of a large stub's recall, bytes")
	fl.Int64Var(&cfg.Recall.MaxWindow, "max-window", d.MaxWindow, "largest streaming window for sequential readers, bytes")
	fl.BoolVar(&cfg.NoPassthrough, "no-passthrough", false, "never open resident files in kernel passthrough")
	fl.BoolVar(&cfg.Debug, "debug", false, "log every FUSE request")
	fl.StringVar(&cfg.MetricsAddr, "metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics")
	// The space monitor's settings, spelled as in `cascadefs fs set`.
	spaceKeys := []string{"quota", "high", "low", "interval", "min-size", "min-age", "exclude", "premigrate"}
	for _, k := range spaceKeys {
		fl.String(k, "", repo.SettingHelp(k))
	}
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	cfg.Settings = map[string]string{}
	var bad error
	fl.Visit(func(f *flag.Flag) {
		if slices.Contains(spaceKeys, f.Name) {
			if err := repo.CheckSetting(f.Name, f.Value.String()); err != nil && bad == nil {
				bad = err
			}
			cfg.Settings[f.Name] = f.Value.String()
		}
	})
	if bad != nil {
		return bad
	}
	if cfg.ReleaseWait == 0 {
		cfg.ReleaseWait = -1 // 0: skip open files at once
	}
	if cfg.Recall.SmallFile == 0 {
		cfg.Recall.SmallFile = 1 // 0: none is recalled whole (a 1-byte file is one region anyway)
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
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dm, err := daemon.Start(ctx, cfg, log)
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
