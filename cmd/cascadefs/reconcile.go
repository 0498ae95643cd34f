package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/migrate"
)

// cmdReconcile walks a filesystem and its archive side by side, on the
// owner of the filesystem that holds PATH.
func cmdReconcile(args []string) error {
	fl := newFlags("reconcile", "[--dry-run] [--json] [--grace DURATION] PATH")
	dry := fl.Bool("dry-run", false, "list orphans and damaged stubs; delete nothing")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	grace := fl.Duration("grace", migrate.DefaultGrace, "orphans younger than this are kept (uploads in flight are never touched)")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if fl.NArg() != 1 {
		fl.Usage()
		return errReported
	}
	if *grace < 0 {
		return fmt.Errorf("--grace must not be negative")
	}
	mount, _, err := daemon.FindMount(fl.Arg(0))
	if err != nil {
		return err
	}
	live := isTerminal(os.Stderr)
	rep, err := daemon.Dial(daemon.RunDir(), mount).Reconcile(migrate.ReconcileOptions{DryRun: *dry, Grace: *grace}, func(m daemon.Message) {
		if live && m.Progress != nil {
			p := m.Progress
			fmt.Fprintf(os.Stderr, "\r\033[K%s: %d files, %d stubs, %d objects", p.Phase, p.Files, p.Stubs, p.Objects)
		}
	})
	if live {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if err != nil {
		return err
	}
	if *asJSON {
		if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
			return err
		}
	} else {
		printReconcile(mount.Mountpoint, rep)
	}
	if rep.DamagedCount > 0 {
		return errReported // damaged stubs: a non-zero exit for scripts
	}
	return nil
}

func printReconcile(mountpoint string, rep *migrate.ReconcileReport) {
	for _, o := range rep.Orphans {
		what := "orphan"
		if o.Incomplete {
			what = "orphan (unfinished upload)"
		}
		switch {
		case o.Deleted:
			fmt.Printf("deleted   %s  %s, %s, stored %s ago\n", o.Key, what, human(o.Size), time.Since(o.Modified).Round(time.Second))
		default:
			fmt.Printf("kept      %s  %s, %s: %s\n", o.Key, what, human(o.Size), keptWhy(o, rep.DryRun))
		}
	}
	for _, d := range rep.Damaged {
		key := ""
		if d.Key != "" {
			key = " (" + d.Key + ")"
		}
		fmt.Printf("DAMAGED   %s/%s%s: %s\n", mountpoint, d.Path, key, d.Problem)
	}
	if int64(len(rep.Orphans)) < rep.OrphanCount || int64(len(rep.Damaged)) < rep.DamagedCount {
		fmt.Printf("(lists cut at %d entries; --json for the report)\n", migrate.ReportLimit)
	}
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete (dry run)"
	}
	fmt.Printf("reconciled %s in %.1fs: %d files, %d stubs, %d archive objects; %d orphan(s) of %s, %s %d (%s); %d damaged stub(s)\n",
		mountpoint, rep.Duration.Seconds(), rep.Files, rep.Stubs, rep.Objects, rep.OrphanCount, human(rep.OrphanBytes),
		verb, rep.Deleted, human(rep.DeletedBytes), rep.DamagedCount)
	if rep.DeleteFailed > 0 {
		fmt.Printf("%d delete(s) failed, first: %s\n", rep.DeleteFailed, rep.FirstDelError)
	}
}

func keptWhy(o migrate.Orphan, dry bool) string {
	if o.Kept != "" {
		return o.Kept
	}
	if dry {
		return "would be deleted"
	}
	return "not deleted"
}
