package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/namespace"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/cascadefs/cascadefs/seal"
)

// cmdRebuild makes a filesystem's stubs again, in an empty backing
// directory, from its archive alone: the descriptions beside the objects
// and the namespace journal.
func cmdRebuild(args []string) error {
	fl := newFlags("rebuild", "--archive URL --name FS [--at TIME] [--include-deleted] [--dry-run] [--json] [--credentials-file F] [--encryption-key-file F] DIR")
	archiveURL := fl.String("archive", "", "the filesystem's archive URL")
	name := fl.String("name", "", "the filesystem's name (its objects are under NAME/ in the archive)")
	at := fl.String("at", "", "as things stood at TIME (RFC 3339, or 2006-01-02 15:04:05 local time); default now")
	includeDeleted := fl.Bool("include-deleted", false, "also bring back deleted and replaced files whose objects are still kept, where no newer file has their path")
	dryRun := fl.Bool("dry-run", false, "say what would be made; make nothing")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	credsFile := fl.String("credentials-file", "", "KEY=VALUE lines put into the environment (archive credentials)")
	keyFile := fl.String("encryption-key-file", "", "the filesystem's archive keys, to open sealed descriptions and journal (its setting encryption-key-file)")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if fl.NArg() != 1 {
		return errors.New("give one DIR: the empty backing directory to rebuild into")
	}
	if *archiveURL == "" || *name == "" {
		return errors.New("--archive and --name are required")
	}
	if err := repo.ValidName("filesystem", *name); err != nil {
		return err
	}
	when, err := parseTime("--at", *at)
	if err != nil {
		return err
	}
	if *credsFile != "" {
		if err := loadEnvFile(*credsFile); err != nil {
			return err
		}
	}
	var keys *seal.Keyring
	if *keyFile != "" {
		if keys, err = seal.Load(*keyFile); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	arch, err := daemon.OpenArchive(ctx, *archiveURL)
	if err != nil {
		return err
	}
	bar := newProgress("rebuild")
	rep, err := namespace.Rebuild(ctx, arch, fl.Arg(0), namespace.RebuildOptions{FS: *name, At: when, IncludeDeleted: *includeDeleted, DryRun: *dryRun, Keys: keys},
		func(p namespace.RebuildProgress) {
			if p.Phase == "make" && p.Total > 0 {
				if bar.files == 0 {
					bar.plan(p.Total, 0)
				}
				bar.done = p.Done - 1
				bar.advance(0)
			}
		})
	if bar.on {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	verb := "made"
	if *dryRun {
		verb = "would make"
	}
	fmt.Printf("%s %d stubs (%s) in %d directories from %d objects and %d journal entries in %s\n",
		verb, rep.Files, human(rep.Bytes), rep.Dirs, rep.Objects, rep.Journal, rep.Duration.Round(time.Millisecond))
	if rep.Deleted+rep.Replaced > 0 && !*includeDeleted {
		fmt.Printf("left out: %d deleted and %d replaced files whose objects are still kept (--include-deleted brings them back)\n", rep.Deleted, rep.Replaced)
	}
	if rep.NoMeta > 0 {
		fmt.Printf("%d objects have no readable description and were not placed (first: %s)\n", rep.NoMeta, rep.FirstNoMeta)
	}
	if rep.BadJournal > 0 {
		fmt.Printf("%d journal entries could not be read and were skipped\n", rep.BadJournal)
	}
	for _, c := range rep.Conflicts {
		fmt.Printf("not made: %s (a file and a directory want the same path)\n", c)
	}
	return nil
}

// parseTime reads a time given to flag: RFC 3339, or a local date and time.
func parseTime(flag, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation(time.DateTime, s, time.Local); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%s %q: want a time such as 2026-12-01T15:04:05Z or \"2026-12-01 15:04:05\"", flag, s)
}
