package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/migrate"
)

// cmdImport makes a stub under the directory PATH for every object under
// the S3 prefix URL that cascadefs did not write, on the filesystem's
// owner: the objects stay where they are and are never deleted.
func cmdImport(args []string) error {
	fl := newFlags("import", "[--dry-run] [--json] s3://BUCKET[/PREFIX] PATH")
	dryRun := fl.Bool("dry-run", false, "say what would be made; make nothing")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("give the objects' s3://BUCKET[/PREFIX] and the directory PATH in the mount the stubs go under")
	}
	mount, rel, err := daemon.FindMount(pos[1])
	if err != nil {
		return err
	}
	live := isTerminal(os.Stderr)
	rep, err := daemon.Dial(daemon.RunDir(), mount).Import(migrate.ImportRequest{URL: pos[0], Path: rel, DryRun: *dryRun}, func(m daemon.Message) {
		if live && m.Import != nil {
			p := m.Import
			fmt.Fprintf(os.Stderr, "\r\033[Kimport: %d objects, %d stubs (%s), at %s", p.Objects, p.Made, human(p.Bytes), p.Last)
		}
	})
	if live {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	if rep == nil {
		return err
	}
	if *asJSON {
		if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
			return err
		}
	} else {
		verb := "made"
		if rep.DryRun {
			verb = "would make"
		}
		fmt.Printf("%d objects under %s: %s %d stubs (%s) under %s in %s; %d paths taken already, %d written by cascadefs, %d names refused, %d failed\n",
			rep.Objects, pos[0], verb, rep.Made, human(rep.Bytes), filepath.Join(mount.Mountpoint, rel), rep.Duration.Round(time.Millisecond),
			rep.Existing, rep.Ours, rep.BadNames, rep.Failed)
		for _, p := range rep.Problems {
			fmt.Printf("  %s\n", p)
		}
	}
	if err != nil {
		return err
	}
	if rep.Failed > 0 {
		return errReported
	}
	return nil
}
