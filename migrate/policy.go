package migrate

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Policy is how the space monitor keeps a filesystem's space in bounds:
// when to act, and which files it may pick. Quota to Premigrate are
// filesystem settings, with their defaults in package settings;
// DefaultPolicy gives the rest.
type Policy struct {
	// Quota is the space the filesystem may use, in bytes; 0 means the
	// size of the backing filesystem.
	Quota int64
	// High starts a cycle when usage passes it (percent of capacity).
	High int
	// Low is where a cycle stops (percent of capacity).
	Low int
	// Interval between checks.
	Interval time.Duration
	// MinSize: smaller files are never picked.
	MinSize int64
	// Leader: the head a migrated file keeps; files no larger free
	// nothing and are never picked.
	Leader int64
	// MinAge: files used (read or written) more recently are never picked.
	MinAge time.Duration
	// Exclude: glob patterns. A pattern without "/" matches a file or
	// directory name anywhere; one with "/" matches the path from the root.
	// An excluded directory excludes everything under it.
	Exclude []string
	// Premigrate: after a cycle, candidates are premigrated until this
	// percentage of capacity is premigrated, so the next cycle only
	// releases.
	Premigrate int
	// Workers: migrations at once.
	Workers int
	// MaxCandidates bounds the candidate heap of one scan.
	MaxCandidates int
}

// DefaultPolicy gives what is not a filesystem setting; a policy from
// settings.Defaults or settings.Parse has it.
func DefaultPolicy() Policy {
	return Policy{
		Workers:       4,       // uploads of one cycle at once
		MaxCandidates: 100_000, // about 10 MB of heap for the best candidates of a scan
	}
}

// Excluded returns the pattern that excludes the backing-relative path
// rel, or "".
func (p *Policy) Excluded(rel string) string {
	name := path.Base(rel)
	for _, pat := range p.Exclude {
		target := name
		if strings.Contains(pat, "/") {
			target = rel
		}
		if ok, _ := path.Match(pat, target); ok {
			return pat
		}
	}
	return ""
}

// Candidate is a file the policy may migrate, with why it ranks where it does.
type Candidate struct {
	Path  string    `json:"path"`  // backing-relative
	Ino   uint64    `json:"ino"`   // the file found: a migration checks it is still the same
	Size  int64     `json:"size"`  // bytes
	Alloc int64     `json:"alloc"` // allocated bytes: what a release frees
	Used  time.Time `json:"used"`  // last read or write
	// Instant: the file has a verified archive copy (premigrated, or a
	// partly recalled stub), so a release needs no upload. These go first.
	Instant bool    `json:"instant"`
	Score   float64 `json:"score"` // allocated KiB × days since last use
}

// frees is what releasing the candidate frees for sure: its stub may keep
// a block for its record.
func (c Candidate) frees() int64 { return max(0, c.Alloc-xattrBlock) }

// Verdict is what the policy says of one file: a candidate, or why not.
type Verdict struct {
	Candidate
	Skip string `json:"skip,omitempty"` // why the file is not a candidate
	Rank int    `json:"rank,omitempty"` // 1 for the first pick (Plan)
}

// Plan is what `cascadefs migrate --dry-run` shows: the policy's verdict on
// each file at root/rels, candidates first in the order a cycle takes them.
func (p *Policy) Plan(root *beneath.Root, rels []string, now time.Time) []Verdict {
	out := make([]Verdict, 0, len(rels))
	for _, rel := range rels {
		st, rec, err := statRecord(root, rel)
		if err != nil {
			out = append(out, Verdict{Candidate: Candidate{Path: rel}, Skip: err.Error()})
			continue
		}
		v := p.judge(rel, &st, rec, now)
		v.Ino = st.Ino
		if v.Skip == "" && p.excludedDir(rel) != "" {
			v.Skip = "in a directory excluded by " + p.excludedDir(rel)
		}
		out = append(out, v)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if (a.Skip == "") != (b.Skip == "") {
			return a.Skip == ""
		}
		return a.Skip == "" && before(&a.Candidate, &b.Candidate)
	})
	for i := range out {
		if out[i].Skip == "" {
			out[i].Rank = i + 1
		}
	}
	return out
}

// statRecord reads what the policy judges of the regular file rel.
func statRecord(root *beneath.Root, rel string) (unix.Stat_t, *stub.Record, error) {
	dir, base, err := root.OpenParent(rel)
	if err != nil {
		return unix.Stat_t{}, nil, err
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return st, nil, errors.New("not a regular file")
	}
	rec, err := stub.ReadRecordIn(dir, base)
	return st, rec, err
}

// excludedDir returns the pattern that excludes a directory above rel.
func (p *Policy) excludedDir(rel string) string {
	for dir := path.Dir(rel); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if pat := p.Excluded(dir); pat != "" {
			return pat
		}
	}
	return ""
}

// lastUse is the later of a file's access and modification times.
func lastUse(st *unix.Stat_t) time.Time {
	at, mt := time.Unix(st.Atim.Unix()), time.Unix(st.Mtim.Unix())
	if mt.After(at) {
		return mt
	}
	return at
}

// xattrBlock: a stub may keep one block for its record (ext4 puts an
// xattr that does not fit the inode in a block of its own).
const xattrBlock = 4096

// judge applies the policy to one regular file. hasRecord and premigrated
// come from its stub record; the score follows the common GPFS ILM weight
// KB_ALLOCATED × DAYS_SINCE_LAST_ACCESS, so the least recently used files
// go first and, among files of one age, the larger ones.
func (p *Policy) judge(rel string, st *unix.Stat_t, rec *stub.Record, now time.Time) Verdict {
	v := Verdict{Candidate: Candidate{Path: rel, Size: st.Size, Alloc: st.Blocks * 512, Used: lastUse(st), Instant: rec != nil}}
	age := now.Sub(v.Used)
	switch {
	case p.Excluded(rel) != "":
		v.Skip = "excluded by " + p.Excluded(rel)
	case st.Size == 0:
		v.Skip = "empty"
	case v.Alloc == 0 || (rec != nil && rec.State == stub.Migrated && v.Alloc <= xattrBlock):
		v.Skip = "migrated: no data here"
	case st.Size < p.MinSize:
		v.Skip = fmt.Sprintf("smaller than min-size %d", p.MinSize)
	case KeptHead(p.Leader, st) >= st.Size:
		v.Skip = fmt.Sprintf("fits in the leader (%d bytes)", p.Leader)
	case age < p.MinAge:
		v.Skip = fmt.Sprintf("used %s ago, within min-age %s", age.Round(time.Second), p.MinAge)
	}
	if age < 0 {
		age = 0
	}
	v.Score = float64(v.Alloc) / 1024 * age.Hours() / 24
	return v
}

// before ranks candidates: instant releases first, then by score, then by
// path so that equal files rank the same way in every scan.
func before(a, b *Candidate) bool {
	if a.Instant != b.Instant {
		return a.Instant
	}
	if a.Score != b.Score {
		return a.Score > b.Score
	}
	return a.Path < b.Path
}
