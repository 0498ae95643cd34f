package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/cascadefs/cascadefs/settings"
)

const fsUsage = `Usage:
  cascadefs fs add --repo DIR NAME --backing DIR --archive URL [--candidates n1,n2,...] [--owner N]
  cascadefs fs list --repo DIR [--json]
  cascadefs fs set --repo DIR NAME KEY=VALUE...
  cascadefs fs remove --repo DIR NAME
`

// cmdFS manages the filesystems in a cluster's repository.
func cmdFS(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, fsUsage)
		return errReported
	}
	sub := map[string]func([]string) error{"add": fsAdd, "list": fsList, "set": fsSet, "remove": fsRemove}[args[0]]
	if sub == nil {
		return fmt.Errorf("unknown subcommand %q\n%s", args[0], fsUsage)
	}
	return sub(args[1:])
}

// parseInterleaved parses flags that may come before or after the
// positional arguments (`fs add --repo D NAME --backing B`).
func parseInterleaved(fl *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			return nil, errReported
		}
		if fl.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func fsAdd(args []string) error {
	fl := newFlags("fs add", "--repo DIR NAME --backing DIR --archive URL [--candidates n1,n2] [--owner N]")
	repoDir := fl.String("repo", "", "repository: a directory (bbolt) or etcd://HOST:PORT[,...]")
	backing := fl.String("backing", "", "backing directory, the same path on every node")
	var spec archiveFlag
	archiveURL := (*string)(&spec)
	fl.Var(&spec, "archive", "archive URL (again for each further copy)")
	candidates := fl.String("candidates", "", "nodes that may serve it (default: every node)")
	owner := fl.String("owner", "", "node that runs its DM session first (default: the first candidate to start)")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *repoDir == "" || *backing == "" || *archiveURL == "" {
		return errors.New("need --repo DIR NAME --backing DIR --archive URL")
	}
	fs := repo.FS{Name: pos[0], Backing: filepath.Clean(*backing), Archive: *archiveURL, Candidates: splitList(*candidates), Owner: *owner}
	if err := repo.ValidName("filesystem", fs.Name); err != nil {
		return err
	}
	for _, c := range fs.Candidates {
		if err := repo.ValidName("node", c); err != nil {
			return err
		}
	}
	if !filepath.IsAbs(fs.Backing) {
		return fmt.Errorf("--backing %s: give an absolute path (the same on every node)", *backing)
	}
	if st, err := os.Stat(fs.Backing); err != nil || !st.IsDir() {
		return fmt.Errorf("--backing %s: not a directory", fs.Backing)
	}
	if err := archive.Validate(fs.Archive); err != nil {
		return err
	}
	if fs.Owner != "" && !fs.IsCandidate(fs.Owner) {
		return fmt.Errorf("--owner %s is not one of the candidates (%s)", fs.Owner, strings.Join(fs.Candidates, ","))
	}
	if fs.Owner != "" {
		fs.Epoch = 1
	}
	r, err := repo.CreateURL(*repoDir, adminLog)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.AddFS(context.Background(), fs); err != nil {
		return err
	}
	fmt.Printf("added filesystem %s\n", fs.Name)
	return nil
}

func fsList(args []string) error {
	fl := newFlags("fs list", "--repo DIR [--json]")
	repoDir := fl.String("repo", "", "repository: a directory (bbolt) or etcd://HOST:PORT[,...]")
	asJSON := fl.Bool("json", false, "print JSON")
	if _, err := parseInterleaved(fl, args); err != nil {
		return err
	}
	r, err := repo.OpenURL(*repoDir, adminLog)
	if err != nil {
		return err
	}
	defer r.Close()
	list, err := r.ListFS(context.Background())
	if err != nil {
		return err
	}
	if *asJSON {
		if list == nil {
			list = []repo.FS{}
		}
		return json.NewEncoder(os.Stdout).Encode(list)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tOWNER\tEPOCH\tCANDIDATES\tBACKING\tARCHIVE\tSETTINGS")
	for _, f := range list {
		owner, cands := f.Owner, strings.Join(f.Candidates, ",")
		if owner == "" {
			owner = "-"
		}
		if cands == "" {
			cands = "(all)"
		}
		var set []string
		for k, v := range f.Settings {
			set = append(set, k+"="+v)
		}
		sort.Strings(set)
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", f.Name, owner, f.Epoch, cands, f.Backing, f.Archive, strings.Join(set, " "))
	}
	return w.Flush()
}

func fsSet(args []string) error {
	fl := newFlags("fs set", "--repo DIR NAME [--archive URL...] KEY=VALUE...")
	repoDir := fl.String("repo", "", "repository: a directory (bbolt) or etcd://HOST:PORT[,...]")
	var spec archiveFlag
	fl.Var(&spec, "archive", "the archive's copies, once per copy (replaces them; a new copy is filled by scrub --repair)")
	fl.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: cascadefs fs set --repo DIR NAME [--archive URL...] KEY=VALUE...\n"+
			"  --archive URL\tthe archive's copies, once per copy (replaces them; the first must already be a copy)\nKeys:\n  candidates\tnodes that may serve it (n1,n2,...)\n")
		for _, k := range settings.Keys() {
			fmt.Fprintf(os.Stderr, "  %s\t%s\n", k, settings.Help(k))
		}
	}
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) < 2 && spec == "" || *repoDir == "" {
		return errors.New("need --repo DIR, NAME and --archive or at least one KEY=VALUE")
	}
	if spec != "" {
		if err := archive.Validate(string(spec)); err != nil {
			return err
		}
	}
	changes := map[string]string{}
	for _, kv := range pos[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%q: want KEY=VALUE", kv)
		}
		if k != "candidates" {
			if err := settings.Check(k, v); err != nil {
				return err
			}
		}
		changes[k] = v
	}
	r, err := repo.OpenURL(*repoDir, adminLog)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.UpdateFS(context.Background(), pos[0], func(f *repo.FS) error {
		if spec != "" {
			// The first copy is what recalls read first and reconcile
			// lists: it must hold every object already.
			first := archive.URLs(string(spec))[0]
			if !slices.Contains(archive.URLs(f.Archive), first) {
				return fmt.Errorf("--archive %s first: not a copy yet; add it after the others, fill it with scrub --repair, then put it first", first)
			}
			f.Archive = string(spec)
		}
		for k, v := range changes {
			if k == "candidates" {
				f.Candidates = splitList(v)
				continue
			}
			if f.Settings == nil {
				f.Settings = map[string]string{}
			}
			f.Settings[k] = v
		}
		if _, err := settings.Parse(f.Settings); err != nil {
			return err // thresholds that contradict each other
		}
		if f.Owner != "" && !f.IsCandidate(f.Owner) {
			return fmt.Errorf("candidates %s leave out the owner %s", changes["candidates"], f.Owner)
		}
		return nil
	})
}

func fsRemove(args []string) error {
	fl := newFlags("fs remove", "--repo DIR NAME")
	repoDir := fl.String("repo", "", "repository: a directory (bbolt) or etcd://HOST:PORT[,...]")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *repoDir == "" {
		return errors.New("need --repo DIR NAME")
	}
	r, err := repo.OpenURL(*repoDir, adminLog)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.RemoveFS(context.Background(), pos[0]); err != nil {
		return err
	}
	fmt.Printf("removed filesystem %s (its backing directory and archive are left as they are)\n", pos[0])
	return nil
}
