package namespace

import (
	"slices"
	"testing"
	"time"
)

func TestPlanReplaysTheJournal(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ver := func(key, path string, seen int) *Version {
		return &Version{Key: key, Meta: &Meta{Path: path, Seen: at(seen), Dirs: []DirAttrs{{UID: 7, Mode: 0o750}, {UID: 8, Mode: 0o700}}}}
	}
	versions := []*Version{
		ver("k-a1", "d/e/a", 1),     // renamed with its directory, then rewritten: k-a2 is newer
		ver("k-b", "d/e/b", 2),      // deleted
		ver("k-c", "x/y/c", 3),      // exchanged with d
		ver("k-a2", "top/e/a", 20),  // uploaded after the rename, at the new path
		ver("k-late", "late/f", 40), // after the --at below
		ver("k-u", "u/g", 4),        // deleted, then undeleted elsewhere
	}
	entries := []JournalEntry{
		{T: at(5), Op: OpRename, From: "d", To: "top"},
		{T: at(6), Op: OpDelete, Key: "k-b"},
		{T: at(7), Op: OpExchange, From: "x", To: "top/e"},
		{T: at(8), Op: OpExchange, From: "x", To: "top/e"}, // and back
		{T: at(9), Op: OpRename, From: "x/y", To: "z"},
		{T: at(10), Op: OpDelete, Key: "k-u"},
		{T: at(11), Op: OpPlace, Key: "k-u", To: "u/g2"},
		{T: at(19), Op: OpReplace, Key: "k-a1"},
		{T: at(30), Op: OpRename, From: "z", To: "zz"}, // after the --at below
	}
	paths := func(p *Plan) []string {
		var out []string
		for _, v := range p.Files {
			out = append(out, v.Path+"="+v.Key)
		}
		return out
	}
	p := MakePlan(versions, entries, at(25), false)
	if want := []string{"top/e/a=k-a2", "u/g2=k-u", "z/c=k-c"}; !slices.Equal(paths(p), want) {
		t.Fatalf("files %v, want %v", paths(p), want)
	}
	if p.Deleted != 1 || p.Replaced != 0 || p.Older != 0 {
		t.Errorf("left out: %+v", p)
	}
	if d := p.Dirs["top"]; d.UID != 7 || d.Mode != 0o750 {
		t.Errorf("attributes of the renamed directory top: %+v (all: %+v)", d, p.Dirs)
	}
	if _, ok := p.Dirs["d"]; ok {
		t.Errorf("the old name d of a renamed directory is still planned: %+v", p.Dirs)
	}

	p = MakePlan(versions, entries, at(25), true)
	if want := []string{"top/e/a=k-a2", "top/e/b=k-b", "u/g2=k-u", "z/c=k-c"}; !slices.Equal(paths(p), want) {
		t.Fatalf("with deleted files: %v, want %v", paths(p), want)
	}

	// Before the rewrite's upload: the old version at the renamed path.
	p = MakePlan(versions, entries, at(12), false)
	if want := []string{"top/e/a=k-a1", "u/g2=k-u", "z/c=k-c"}; !slices.Equal(paths(p), want) {
		t.Fatalf("at 12s: %v, want %v", paths(p), want)
	}
	// Between the replace and the new upload: the file is not current;
	// with deleted files, its old version comes back.
	p = MakePlan(versions, entries, at(19), false)
	if p.Replaced != 1 || slices.Contains(paths(p), "top/e/a=k-a1") {
		t.Fatalf("at 19s: %v %+v", paths(p), p)
	}
	// Now: everything, the late rename applied.
	p = MakePlan(versions, entries, at(50), false)
	if want := []string{"late/f=k-late", "top/e/a=k-a2", "u/g2=k-u", "zz/c=k-c"}; !slices.Equal(paths(p), want) {
		t.Fatalf("now: %v, want %v", paths(p), want)
	}
}

func TestJournalEntriesAreChecked(t *testing.T) {
	for _, e := range []JournalEntry{
		{Op: OpRename, From: "../etc", To: "a"},
		{Op: OpRename, From: "a", To: "/etc/passwd"},
		{Op: OpPlace, Key: "k", To: "a/../../b"},
		{Op: OpDelete},
		{Op: "chmod", From: "a", To: "b"},
	} {
		if e.valid() {
			t.Errorf("%+v taken as valid", e)
		}
	}
	if e := (JournalEntry{Op: OpRename, From: "a/b", To: "c"}); !e.valid() {
		t.Errorf("%+v refused", e)
	}
}
