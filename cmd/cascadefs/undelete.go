package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/migrate"
)

// cmdUndelete lists the deleted and replaced versions whose archive copy
// the filesystem keeps for its retention (the setting retention), and
// brings them back.
func cmdUndelete(args []string) error {
	fl := newFlags("undelete", "--list [--json] PATH... | [--at TIME] [--to NEWPATH] PATH...")
	list := fl.Bool("list", false, "list the deleted and replaced files kept under each PATH (which need not exist)")
	asJSON := fl.Bool("json", false, "with --list: print JSON")
	at := fl.String("at", "", "bring back the version current at TIME (RFC 3339, or 2006-01-02 15:04:05 local time); default the newest kept")
	to := fl.String("to", "", "put the file at NEWPATH (one PATH only); a file is never replaced")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if fl.NArg() == 0 {
		return errors.New("no PATH given")
	}
	if !*list {
		return undelete(fl.Args(), *at, *to)
	}
	var all []migrate.KeptVersion
	for _, p := range fl.Args() {
		// The path itself may be gone: its mount is found from the path.
		m, rel, err := daemon.FindMount(p)
		if err != nil {
			return err
		}
		kept, err := daemon.Dial(daemon.RunDir(), m).Kept(daemon.Request{Paths: []string{rel}})
		if err != nil {
			return err
		}
		for i := range kept {
			kept[i].Path = filepath.Join(m.Mountpoint, kept[i].Path)
		}
		all = append(all, kept...)
	}
	if *asJSON {
		if all == nil {
			all = []migrate.KeptVersion{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tWHAT\tSIZE\tOWNER\tKEPT UNTIL\tPATH")
	for _, v := range all {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", v.At.Local().Format(time.DateTime), v.Fate, v.Size, owner(v.UID),
			v.Until.Local().Format(time.DateTime), v.Path)
	}
	return tw.Flush()
}

// owner names a uid, or gives it as a number.
func owner(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

// undelete brings each PATH's kept version back.
func undelete(paths []string, at, to string) error {
	when, err := parseTime("--at", at)
	if err != nil {
		return err
	}
	if to != "" && len(paths) != 1 {
		return errors.New("--to takes one PATH")
	}
	failed := false
	for _, p := range paths {
		m, rel, err := daemon.FindMount(p)
		if err != nil {
			return err
		}
		req := migrate.UndeleteRequest{Path: rel, At: when}
		if to != "" {
			tm, trel, err := daemon.FindMount(to)
			if err != nil {
				return err
			}
			if tm.Mountpoint != m.Mountpoint {
				return fmt.Errorf("--to %s: not in the filesystem of %s", to, p)
			}
			req.To = trel
		}
		v, err := daemon.Dial(daemon.RunDir(), m).Undelete(req)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cascadefs undelete: %s: %v\n", p, oneLine(err))
			failed = true
			continue
		}
		fmt.Printf("undeleted %s (%s %s, %d bytes)\n", filepath.Join(m.Mountpoint, v.Path), v.Fate, v.At.Local().Format(time.DateTime), v.Size)
	}
	if failed {
		return errReported
	}
	return nil
}
