package namespace

import (
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Version is one upload of a file, as a rebuild finds it: its
// description, and what the journal did to it since.
type Version struct {
	Key  string
	Meta *Meta
	Path string    // where it is now (after the journal's renames)
	Gone string    // "", OpDelete or OpReplace: why it is no longer a current file
	At   time.Time // when it went
}

// Plan is what a rebuild makes: the files, as the versions to place at
// their paths, and the attributes of the directories they are in.
type Plan struct {
	Files []*Version          // sorted by path
	Dirs  map[string]DirAttrs // known attributes by path; a directory not here gets root's 0755
	// Counts of what is left out.
	Deleted  int // deleted versions (brought back with includeDeleted)
	Replaced int // old versions of rewritten files whose path has no newer one (likewise)
	Older    int // older versions of a path that has a newer one
}

// MakePlan replays the journal (entries in time order) over the uploads,
// as things stood at time at: the newest version of each path, and with
// includeDeleted, for a path that has none, the newest that was deleted
// or replaced there.
func MakePlan(versions []*Version, entries []JournalEntry, at time.Time, includeDeleted bool) *Plan {
	var live []*Version
	for _, v := range versions {
		if !v.Meta.Seen.After(at) {
			live = append(live, v)
		}
	}
	sort.SliceStable(live, func(i, k int) bool { return live[i].Meta.Seen.Before(live[k].Meta.Seen) })
	byKey := map[string]*Version{}
	dirs := map[string]dirSeen{}
	born := func(v *Version) {
		v.Path, v.Gone = v.Meta.Path, ""
		byKey[v.Key] = v
		d := filepath.Dir(v.Path)
		for i := len(v.Meta.Dirs) - 1; i >= 0 && d != "."; i-- {
			if old, ok := dirs[d]; !ok || !old.seen.After(v.Meta.Seen) {
				dirs[d] = dirSeen{v.Meta.Dirs[i], v.Meta.Seen}
			}
			d = filepath.Dir(d)
		}
	}
	i := 0
	for _, e := range entries {
		if e.T.After(at) {
			break
		}
		for ; i < len(live) && !live[i].Meta.Seen.After(e.T); i++ {
			born(live[i])
		}
		switch e.Op {
		case OpRename, OpExchange:
			move := func(p string) string { return moved(p, e.From, e.To, e.Op == OpExchange) }
			for _, v := range byKey {
				if v.Gone == "" {
					v.Path = move(v.Path)
				}
			}
			renamed := map[string]dirSeen{}
			for p, d := range dirs {
				renamed[move(p)] = d
			}
			dirs = renamed
		case OpDelete, OpReplace:
			if v := byKey[e.Key]; v != nil && v.Gone == "" {
				v.Gone, v.At = e.Op, e.T
			}
		case OpPlace:
			if v := byKey[e.Key]; v != nil {
				v.Path, v.Gone = e.To, ""
			}
		}
	}
	for ; i < len(live); i++ {
		born(live[i])
	}

	p := &Plan{Dirs: map[string]DirAttrs{}}
	newest := map[string]*Version{}
	for _, v := range byKey {
		if v.Gone != "" {
			continue
		}
		if cur := newest[v.Path]; cur == nil || cur.Meta.Seen.Before(v.Meta.Seen) {
			if cur != nil {
				p.Older++
			}
			newest[v.Path] = v
		} else {
			p.Older++
		}
	}
	gone := map[string]*Version{}
	for _, v := range byKey {
		if v.Gone == "" || newest[v.Path] != nil {
			continue
		}
		if cur := gone[v.Path]; cur == nil || cur.At.Before(v.At) {
			gone[v.Path] = v
		}
	}
	for _, v := range gone {
		switch {
		case includeDeleted:
			newest[v.Path] = v
		case v.Gone == OpDelete:
			p.Deleted++
		default:
			p.Replaced++
		}
	}
	for _, v := range newest {
		p.Files = append(p.Files, v)
	}
	sort.Slice(p.Files, func(i, k int) bool { return p.Files[i].Path < p.Files[k].Path })
	for path, d := range dirs {
		p.Dirs[path] = d.attrs
	}
	return p
}

type dirSeen struct {
	attrs DirAttrs
	seen  time.Time
}

// moved is where path p is after from was renamed to (or, exchange,
// swapped with) to.
func moved(p, from, to string, exchange bool) string {
	if rest, ok := under(p, from); ok {
		return to + rest
	}
	if exchange {
		if rest, ok := under(p, to); ok {
			return from + rest
		}
	}
	return p
}

// under reports whether p is dir or inside it, and the rest of p.
func under(p, dir string) (string, bool) {
	if p == dir {
		return "", true
	}
	if strings.HasPrefix(p, dir+"/") {
		return p[len(dir):], true
	}
	return "", false
}
