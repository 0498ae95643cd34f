package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/cascadefs/cascadefs/cluster"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/units"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/repo"
	"golang.org/x/sys/unix"
)

// target groups the paths of one command by the mount that serves them.
type target struct {
	mount daemon.MountInfo
	rels  []string
}

// resolve maps every path to its mount first, so that one bad path stops
// the command before anything is changed.
func resolve(paths []string) ([]target, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("no PATH given")
	}
	var out []target
	idx := map[string]int{}
	for _, p := range paths {
		m, rel, err := daemon.FindMount(p)
		if err != nil {
			return nil, err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		i, ok := idx[m.Name]
		if !ok {
			i = len(out)
			idx[m.Name] = i
			out = append(out, target{mount: m})
		}
		out[i].rels = append(out[i].rels, rel)
	}
	return out, nil
}

func cmdMigrate(args []string) error {
	fl := newFlags("migrate", "[-r] [--premigrate] [-j N] [--dry-run] PATH...")
	r := fl.Bool("r", false, "descend into directories")
	pre := fl.Bool("premigrate", false, "copy to the archive but keep the data")
	jobs := fl.Int("j", 4, "files migrated in parallel")
	dry := fl.Bool("dry-run", false, "change nothing: show what the space monitor's policy would pick, in order, and why")
	asJSON := fl.Bool("json", false, "with --dry-run: print JSON")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if *dry {
		return dryRun(fl.Args(), *r, *asJSON)
	}
	verb := "migrated"
	if *pre {
		verb = "premigrated"
	}
	return batch("migrate", verb, fl.Args(), daemon.Request{Recursive: *r, Premigrate: *pre, Jobs: *jobs})
}

// dryRun prints the policy's verdict on each file: the candidates in the
// order a cycle would take them, then the files it would leave, and why.
func dryRun(paths []string, recursive, asJSON bool) error {
	targets, err := resolve(paths)
	if err != nil {
		return err
	}
	var all []migrate.Verdict
	for _, t := range targets {
		verdicts, err := daemon.Dial(daemon.RunDir(), t.mount).Plan(daemon.Request{Paths: t.rels, Recursive: recursive})
		if err != nil {
			return err
		}
		for i := range verdicts {
			verdicts[i].Path = filepath.Join(t.mount.Mountpoint, verdicts[i].Path)
		}
		all = append(all, verdicts...)
	}
	if asJSON {
		if all == nil {
			all = []migrate.Verdict{}
		}
		return json.NewEncoder(os.Stdout).Encode(all)
	}
	picked := 0
	var bytes int64
	for _, v := range all {
		if v.Skip == "" {
			fmt.Printf("%4d  %s\n", v.Rank, describe(v.Candidate))
			picked++
			bytes += v.Alloc
		}
	}
	for _, v := range all {
		if v.Skip != "" {
			fmt.Printf("   -  %s  skipped: %s\n", v.Path, v.Skip)
		}
	}
	fmt.Printf("the policy would pick %d of %d file(s), %s allocated; nothing was changed\n", picked, len(all), human(bytes))
	return nil
}

func cmdRecall(args []string) error {
	fl := newFlags("recall", "[-r] [-j N] PATH... | --cancel PATH... | --cancel --all [PATH]")
	r := fl.Bool("r", false, "descend into directories")
	jobs := fl.Int("j", 4, "files recalled in parallel")
	cancel := fl.Bool("cancel", false, "cancel the pending recalls of the files named (or under the directories named): waiting readers get ECANCELED, GETs stop, what was recalled stays")
	all := fl.Bool("all", false, "with --cancel: every pending recall of the filesystem (of PATH, else of every filesystem mounted here)")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if *cancel {
		return cancelRecalls(fl.Args(), *all)
	}
	if *all {
		return fmt.Errorf("--all goes with --cancel")
	}
	return batch("recall", "recalled", fl.Args(), daemon.Request{Recursive: *r, Jobs: *jobs})
}

// cancelRecalls cancels pending events, on each filesystem's owner.
func cancelRecalls(paths []string, all bool) error {
	var targets []target
	switch {
	case all && len(paths) == 0:
		mounts, err := daemon.MountsIn(daemon.RunDir())
		if err != nil {
			return err
		}
		for _, m := range mounts {
			targets = append(targets, target{mount: m})
		}
	case len(paths) == 0:
		return fmt.Errorf("name the files whose recalls to cancel, or --all")
	default:
		var err error
		if targets, err = resolve(paths); err != nil {
			return err
		}
	}
	for _, t := range targets {
		evs, err := daemon.Dial(daemon.RunDir(), t.mount).Cancel(daemon.Request{Paths: t.rels, All: all})
		if err != nil {
			return fmt.Errorf("%s: %w", t.mount.Mountpoint, err)
		}
		for _, ev := range evs {
			fmt.Printf("cancelled %s %s [%d,+%d]\n", ev.Type, filepath.Join(t.mount.Mountpoint, ev.Path), ev.Offset, ev.Length)
		}
		fmt.Printf("%s: %d pending event(s) cancelled\n", t.mount.Mountpoint, len(evs))
	}
	return nil
}

func batch(op, verb string, paths []string, req daemon.Request) error {
	targets, err := resolve(paths)
	if err != nil {
		return err
	}
	failed := false
	for _, t := range targets {
		req.Paths = t.rels
		bar := newProgress(op)
		err := daemon.Dial(daemon.RunDir(), t.mount).Batch(op, req, func(m daemon.Message) {
			switch m.Type {
			case "plan":
				bar.plan(m.Files, m.Bytes)
			case "file":
				e := m.Entry
				if e.Error != "" {
					failed = true
					bar.printf("cascadefs %s: %s\n", op, e.Error)
				} else if e.Skipped != "" {
					bar.printf("cascadefs %s: %s: skipped: %s\n", op, e.Path, e.Skipped)
				}
				bar.advance(e.Moved)
			case "done":
				bar.finish()
				s := m.Sum
				rate := ""
				if s.Seconds > 0 && s.Bytes > 0 {
					rate = fmt.Sprintf(" (%s/s)", human(int64(float64(s.Bytes)/s.Seconds)))
				}
				fmt.Printf("%s %d file(s), %s in %.1fs%s; %d failed, %d skipped\n",
					verb, s.Files, human(s.Bytes), s.Seconds, rate, s.Failed, s.Skipped)
			}
		})
		if err != nil {
			return err
		}
	}
	if failed {
		return errReported
	}
	return nil
}

func cmdLs(args []string) error {
	fl := newFlags("ls", "[-r] [--json] PATH...")
	r := fl.Bool("r", false, "descend into directories")
	asJSON := fl.Bool("json", false, "print JSON")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	targets, err := resolve(fl.Args())
	if err != nil {
		return err
	}
	var all []daemon.Entry
	for _, t := range targets {
		entries, err := daemon.Dial(daemon.RunDir(), t.mount).Ls(daemon.Request{Paths: t.rels, Recursive: *r})
		if err != nil {
			return err
		}
		for i := range entries {
			entries[i].Path = strings.TrimPrefix(t.mount.Mountpoint+"/"+entries[i].Path, "")
		}
		all = append(all, entries...)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "STATE\tSIZE\tRESIDENT\tLEADER\t PATH\t OBJECT\t")
	bad := false
	for _, e := range all {
		obj := e.Object
		switch {
		case e.Origin != "":
			obj = "imported " + e.Origin
			if e.Unverified {
				obj += " (no checksums yet)"
			}
		case e.SealedWith != "":
			obj += " (sealed, key " + e.SealedWith + ")"
		}
		if e.Error != "" {
			obj, bad = "error: "+e.Error, true
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t %s\t %s\t\n", e.State, e.Size, e.ResidentBytes, e.Leader, e.Path, obj)
	}
	tw.Flush()
	if bad {
		return errReported
	}
	return nil
}

// StatusReport is what `cascadefs status --json` prints.
type StatusReport struct {
	Cluster *cluster.Status `json:"cluster,omitempty"`
	Nodes   []repo.Node     `json:"registered_nodes,omitempty"` // from the repository when no node answers
	Mounts  []daemon.Status `json:"mounts"`
}

func cmdStatus(args []string) error {
	fl := newFlags("status", "[--repo DIR] [--json]")
	asJSON := fl.Bool("json", false, "print JSON")
	repoDir := fl.String("repo", "", "the cluster whose repository is DIR or etcd://HOST:PORT,... (default: any node on this host)")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	var rep StatusReport
	var unhealthy []string
	// Every daemon of this host is asked at once, each for at most
	// cluster.StatusWait: a stopped or cut-off one cannot hold the answer.
	type mountAnswer struct {
		st  daemon.Status
		err error
	}
	var nodes []cluster.Status
	var silent []string
	var mounts []daemon.MountInfo
	var mountsErr error
	var answers []mountAnswer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); nodes, silent = cluster.LocalNodes(daemon.RunDir()) }()
	mounts, mountsErr = daemon.MountsIn(daemon.RunDir())
	if mountsErr != nil {
		return mountsErr
	}
	sort.Slice(mounts, func(i, j int) bool { return mounts[i].Name < mounts[j].Name })
	answers = make([]mountAnswer, len(mounts))
	for i, m := range mounts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := daemon.Dial(daemon.RunDir(), m).Status()
			answers[i] = mountAnswer{st, err}
		}()
	}
	wg.Wait()
	for _, s := range silent {
		unhealthy = append(unhealthy, fmt.Sprintf("the node daemon at %s did not answer within %v", s, cluster.StatusWait))
	}
	for _, st := range nodes {
		if *repoDir == "" || cluster.SameDir(st.Repo, *repoDir) {
			rep.Cluster = &st
			unhealthy = append(unhealthy, st.Healthy()...)
			break
		}
	}
	if rep.Cluster == nil && *repoDir != "" {
		// No node of that cluster runs here: show what the repository says.
		r, err := repo.OpenURL(*repoDir, adminLog)
		if err != nil {
			return err
		}
		defer r.Close()
		fss, err := r.ListFS(context.Background())
		if err != nil {
			return err
		}
		rep.Cluster = &cluster.Status{Repo: *repoDir}
		for _, f := range fss {
			rep.Cluster.FS = append(rep.Cluster.FS, cluster.FSStatus{FS: f, Session: daemon.SessionInfo{Owner: f.Owner, Epoch: f.Epoch, State: "unknown (no node of this cluster runs on this host)"}})
		}
		if rep.Nodes, err = r.ListNodes(context.Background()); err != nil {
			return err
		}
	}
	bad := false
	for i, m := range mounts {
		st, err := answers[i].st, answers[i].err
		if errors.Is(err, daemon.ErrOtherMount) {
			continue // another instance's mount of the same name
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cascadefs status: %s at %s: %v\n", m.Name, m.Mountpoint, oneLine(err))
			unhealthy = append(unhealthy, m.Name+" did not answer")
			bad = true
			continue
		}
		if rep.Cluster == nil && st.SessionInfo.State != "active" {
			unhealthy = append(unhealthy, "filesystem "+st.Name+": "+st.SessionInfo.State)
		}
		rep.Mounts = append(rep.Mounts, st)
	}
	if *asJSON {
		if rep.Mounts == nil {
			rep.Mounts = []daemon.Status{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printCluster(&rep)
		if len(rep.Mounts) == 0 && !bad && rep.Cluster == nil {
			fmt.Println("no cascadefs filesystem is mounted")
		}
		for _, s := range rep.Mounts {
			fmt.Printf("%s on %s (pid %d, up %s)\n", s.Source, s.Mountpoint, s.PID, time.Since(s.Started).Round(time.Second))
			fmt.Printf("  backing:     %s\n  archive:     %s\n  passthrough: %v\n", s.Backing, s.Archive, s.Passthrough)
			printSession("  DM session:  ", s.SessionInfo)
		}
	}
	if bad || len(unhealthy) > 0 {
		for _, u := range unhealthy {
			fmt.Fprintln(os.Stderr, "cascadefs status: unhealthy:", u)
		}
		return errReported
	}
	return nil
}

func printCluster(rep *StatusReport) {
	c := rep.Cluster
	if c == nil {
		return
	}
	if c.Node != "" {
		fmt.Printf("cluster (as node %s sees it; repository %s)\n", c.Node, c.Repo)
	} else {
		fmt.Printf("cluster (repository %s; no node of it runs on this host)\n", c.Repo)
	}
	if c.Engine != "" {
		fmt.Printf("  repository engine %s\n", c.Engine)
	}
	leases := map[string]string{}
	for _, l := range c.Leases {
		leases[l.Node] = "lapsed"
		if l.Live {
			leases[l.Node] = "live (ttl " + l.TTL.String() + ")"
		}
	}
	if c.Node != "" && !c.LeaseValid {
		leases[c.Node] = "NOT VALID: " + c.Node + " does not act for what it owns"
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tSTATUS\tGOSSIP\tRPC\tLOAD\tLEASE")
	for _, m := range c.Members {
		lease := leases[m.Name]
		if lease == "" {
			lease = "none"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%.2f\t%s\n", m.Name, m.Status, m.Addr, m.RPC, m.Load, lease)
	}
	for _, n := range rep.Nodes {
		fmt.Fprintf(tw, "  %s\tunknown\t%s\t%s\t-\t-\n", n.Name, n.Bind, n.RPC)
	}
	tw.Flush()
	for _, f := range c.FS {
		fmt.Printf("  filesystem %s: backing %s, archive %s\n", f.Name, f.Backing, f.Archive)
		if f.SettingsError != "" {
			fmt.Printf("    SETTINGS DO NOT PARSE (the last good ones are in use): %s\n", f.SettingsError)
		}
		printSession("    DM session: ", f.Session)
		for _, tk := range f.Takeovers {
			from, to := tk.From, tk.To
			if from == "" {
				from = "-"
			}
			if to == "" {
				to = "(nobody)"
			}
			fmt.Printf("    %s  %s -> %s (epoch %d): %s\n", tk.At.Local().Format("2006-01-02 15:04:05.000"), from, to, tk.Epoch, tk.Reason)
		}
	}
	fmt.Println()
}

func printSession(prefix string, s daemon.SessionInfo) {
	indent := prefix[:len(prefix)-len(strings.TrimLeft(prefix, " "))]
	owner := ""
	if s.Owner != "" {
		owner = fmt.Sprintf(" on %s (epoch %d)", s.Owner, s.Epoch)
	}
	fmt.Printf("%s%s%s, %d workers, %d pending event(s), %d pending destroy(s)\n",
		prefix, s.State, owner, s.Workers, len(s.PendingEvents), s.PendingDestroy)
	for _, p := range s.PendingEvents {
		state := "queued"
		if p.Running {
			state = "running"
		}
		from := ""
		if p.Event.Node != "" {
			from = " from " + p.Event.Node
		}
		fmt.Printf("%s  %s %s [%d,+%d]%s: %s for %s, %d waiter(s), %s priority\n", indent, p.Event.Type, p.Event.Path, p.Event.Offset, p.Event.Length,
			from, state, p.Age.Round(time.Millisecond), p.Waiters, p.Priority)
	}
	if r := s.Rates; r != nil {
		fmt.Printf("%s  transfers: recall %s/s (%s), migrate %s/s (%s)\n", indent,
			human(int64(r.Recall)), capOf(r.RecallLimit), human(int64(r.Migrate)), capOf(r.MigrateLimit))
	}
	if c := s.Copies; c != nil {
		fmt.Printf("%s  archive copies: %d; reads moved to the next copy: %d, copies repaired: %d, repairs failed: %d\n",
			indent, c.Copies, c.Faults, c.Repaired, c.RepairFailed)
	}
	if s.Space != nil {
		printSpace(indent+"  ", s.Space)
	}
	if r := s.LastScrub; r != nil {
		done := "complete"
		if !r.Complete {
			done = "stopped at " + r.Last
		}
		fmt.Printf("%s  last scrub %s ago: %d files, %s checked, %d bad copies, %d repaired (%s)\n",
			indent, ago(r.Started), r.Files, human(r.Bytes), r.BadCount, r.Repaired, done)
	}
	if r := s.LastReconcile; r != nil {
		dry := ""
		if r.DryRun {
			dry = " (dry run)"
		}
		fmt.Printf("%s  last reconcile%s %s ago: %d stubs, %d objects, %d orphan(s), %d deleted, %d damaged stub(s)\n",
			indent, dry, ago(r.Started), r.Stubs, r.Objects, r.OrphanCount, r.Deleted, r.DamagedCount)
	}
}

// printSpace shows the space monitor: usage against thresholds, the last
// cycle and the files the next cycle would take first.
func printSpace(indent string, sp *migrate.SpaceStatus) {
	limit := "of the backing filesystem's " + human(sp.Capacity)
	if sp.Quota > 0 {
		limit = "of quota " + human(sp.Quota)
	}
	pct := 0.0
	if sp.Capacity > 0 {
		pct = float64(sp.Usage) * 100 / float64(sp.Capacity)
	}
	fmt.Printf("%sspace: %s used %s (%.1f%%); high %d%%, low %d%%, premigrate %d%%, checked every %s, last %s ago\n",
		indent, human(sp.Usage), limit, pct, sp.High, sp.Low, sp.Premigrate, sp.Interval, ago(sp.MeasuredAt))
	if sp.Error != "" {
		fmt.Printf("%s  last check failed: %s\n", indent, sp.Error)
	}
	if c := sp.LastCycle; c != nil {
		fmt.Printf("%s  last cycle %s ago (%s): %d file(s) migrated, %s released, %d premigrated (%s), %d open, %d failed, %s -> %s, took %s\n",
			indent, ago(c.Start), c.Reason, c.Files, human(c.Bytes), c.Premigrated, human(c.PremigratedB), c.Busy, c.Failed,
			human(c.UsageBefore), human(c.UsageAfter), c.Duration.Round(time.Millisecond))
		if c.Blocked != "" {
			fmt.Printf("%s    releases blocked: %s\n", indent, c.Blocked)
		}
		for _, f := range c.FirstFailures {
			fmt.Printf("%s    failed: %s\n", indent, f)
		}
	} else {
		fmt.Printf("%s  no cycle yet (%d so far)\n", indent, sp.Cycles)
	}
	if len(sp.Next) > 0 {
		fmt.Printf("%s  next candidates (scanned %s ago):\n", indent, ago(sp.ScannedAt))
		for _, c := range sp.Next {
			fmt.Printf("%s    %s\n", indent, describe(c))
		}
	}
}

// describe says why the policy ranks a candidate where it does.
func describe(c migrate.Candidate) string {
	how := "needs an upload"
	if c.Instant {
		how = "premigrated: instant release"
	}
	return fmt.Sprintf("%s  %s allocated, last used %s ago, score %.4g, %s", c.Path, human(c.Alloc), ago(c.Used), c.Score, how)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String()
}

func human(n int64) string { return units.Human(n) }

func capOf(limit int64) string {
	if limit <= 0 {
		return "no cap"
	}
	return "cap " + human(limit) + "/s"
}
