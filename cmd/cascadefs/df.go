package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"text/tabwriter"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/migrate"
)

// cmdDF shows, per filesystem, its files and bytes by state, what the
// archive holds, and its space against the thresholds (as dsmdf does).
func cmdDF(args []string) error {
	fl := newFlags("df", "[--json] [PATH...]")
	asJSON := fl.Bool("json", false, "print JSON")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	var mounts []daemon.MountInfo
	if fl.NArg() == 0 {
		var err error
		if mounts, err = daemon.MountsIn(daemon.RunDir()); err != nil {
			return err
		}
	} else {
		for _, p := range fl.Args() {
			m, _, err := daemon.FindMount(p)
			if err != nil {
				return err
			}
			mounts = append(mounts, m)
		}
	}
	var out []daemon.DF
	bad := false
	for _, m := range mounts {
		name := m.Name
		df, err := daemon.Dial(daemon.RunDir(), m).DF()
		if errors.Is(err, daemon.ErrOtherMount) && fl.NArg() == 0 {
			continue // another instance's mount of the same name
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cascadefs df: %s: %v\n", name, oneLine(err))
			bad = true
			continue
		}
		// Several nodes on one host mount the same filesystem: once.
		if !slices.ContainsFunc(out, func(o daemon.DF) bool { return o.Name == df.Name }) {
			out = append(out, df)
		}
	}
	if *asJSON {
		if out == nil {
			out = []daemon.DF{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	} else if len(out) > 0 {
		printDF(out)
	} else if !bad {
		fmt.Println("no cascadefs filesystem is mounted")
	}
	if bad {
		return errReported
	}
	return nil
}

func printDF(out []daemon.DF) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FILESYSTEM\tSIZE\tUSED\tUSE%\tHIGH\tLOW\tRESIDENT\tPREMIGRATED\tMIGRATED\tIN ARCHIVE\tMOUNTED ON")
	for _, d := range out {
		size := human(d.Capacity)
		if d.Quota > 0 {
			size += " (quota)"
		}
		pct := 0.0
		if d.Capacity > 0 {
			pct = float64(d.Usage) * 100 / float64(d.Capacity)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f%%\t%d%%\t%d%%\t%s\t%s\t%s\t%s\t%s\n", d.Name, size, human(d.Usage), pct, d.High, d.Low,
			files(d.Resident), files(d.Premigrated), files(d.Migrated), human(d.ArchiveBytes), d.Mountpoint)
	}
	tw.Flush()
	for _, d := range out {
		if d.Damaged > 0 {
			fmt.Printf("%s: %d file(s) with an unreadable stub record (cascadefs reconcile --dry-run lists them)\n", d.Name, d.Damaged)
		}
		if d.Incomplete > 0 {
			fmt.Printf("%s: %d entr(ies) could not be read (vanished during the walk, or no access): counts are short\n", d.Name, d.Incomplete)
		}
	}
}

// files is "N files, SIZE" of one state; SIZE as ls shows the files.
func files(c migrate.StateCount) string {
	return fmt.Sprintf("%d / %s", c.Files, human(c.Bytes))
}
