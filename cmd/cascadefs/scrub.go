package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/units"
	"github.com/cascadefs/cascadefs/scrub"
)

// cmdScrub reads the archive's copies of the files under each PATH back,
// on the filesystem's owner, and checks every chunk.
func cmdScrub(args []string) error {
	fl := newFlags("scrub", "[--repair] [--rate SIZE] [--after PATH] [--json] PATH...")
	repair := fl.Bool("repair", false, "write a bad copy again from a good one")
	rate := fl.String("rate", "", "read at most SIZE bytes per second from the archive (such as 50MiB; default no bound)")
	after := fl.String("after", "", "resume a run: skip the files up to PATH (a run cut short says where it stopped)")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if fl.NArg() == 0 {
		return errors.New("no PATH given")
	}
	opt := scrub.Options{Repair: *repair}
	if *rate != "" {
		r, err := units.ParseSize(*rate)
		if err != nil || r <= 0 {
			return fmt.Errorf("--rate %q: want a size per second such as 50MiB", *rate)
		}
		opt.Rate = r
	}
	var mount daemon.MountInfo
	for i, p := range fl.Args() {
		m, rel, err := daemon.FindMount(p)
		if err != nil {
			return err
		}
		if i > 0 && m.Mountpoint != mount.Mountpoint {
			return fmt.Errorf("%s: not in the filesystem of %s (scrub one filesystem at a time)", p, fl.Arg(0))
		}
		mount = m
		opt.Paths = append(opt.Paths, rel)
	}
	if *after != "" {
		m, rel, err := daemon.FindMount(*after)
		if err != nil {
			return err
		}
		if m.Mountpoint != mount.Mountpoint {
			return fmt.Errorf("--after %s: not in the filesystem of %s", *after, fl.Arg(0))
		}
		opt.After = rel
	}
	live := isTerminal(os.Stderr)
	rep, err := daemon.Dial(daemon.RunDir(), mount).Scrub(opt, func(m daemon.Message) {
		if live && m.Scrub != nil {
			p := m.Scrub
			fmt.Fprintf(os.Stderr, "\r\033[Kscrub: %d files, %s checked, %d bad, at %s", p.Files, human(p.Bytes), p.BadCount, p.Last)
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
		fmt.Printf("scrubbed %d files: %d objects, %s checked in %s; %d bad copies, %d repaired\n",
			rep.Files, rep.Objects, human(rep.Bytes), rep.Duration.Round(time.Millisecond), rep.BadCount, rep.Repaired)
		for _, b := range rep.Bad {
			state := "not repaired"
			if b.Repaired {
				state = "repaired"
			}
			fmt.Printf("  %s copy %d: %s (%s)\n", filepath.Join(mount.Mountpoint, b.Path), b.Copy, b.Problem, state)
		}
		if !rep.Complete && rep.Last != "" {
			fmt.Printf("stopped before the end; resume with --after %s\n", filepath.Join(mount.Mountpoint, rep.Last))
		}
	}
	if err != nil {
		return err
	}
	if rep.BadCount > rep.Repaired {
		return errReported // bad copies left: a non-zero exit for scripts
	}
	return nil
}
