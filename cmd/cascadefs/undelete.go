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
// the filesystem keeps for its retention (the setting retention).
func cmdUndelete(args []string) error {
	fl := newFlags("undelete", "--list [--json] PATH...")
	list := fl.Bool("list", false, "list the deleted and replaced files kept under each PATH (which need not exist)")
	asJSON := fl.Bool("json", false, "with --list: print JSON")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if !*list {
		return errors.New("bringing a version back is not built yet; --list shows what is kept")
	}
	if fl.NArg() == 0 {
		return errors.New("no PATH given")
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
