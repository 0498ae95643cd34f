// Package scrub reads a filesystem's archive copies back and checks every
// chunk of every migrated or premigrated file's object against its
// checksum, at a bounded rate, repairing a bad copy from a good one when
// asked. A run goes through the tree in a fixed order (depth first, names
// sorted), so one cut short resumes after the last file it finished.
package scrub

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/throttle"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Options say what a run checks.
type Options struct {
	Paths  []string `json:"paths"`          // backing-relative; "." is the whole filesystem
	Repair bool     `json:"repair"`         // write bad copies again from a good one
	Rate   int64    `json:"rate,omitempty"` // bytes per second read from the archive (0: no bound)
	// After resumes a run: files up to this path (in the run's order)
	// are skipped.
	After string `json:"after,omitempty"`
}

// Problem is a copy found bad.
type Problem struct {
	Path     string `json:"path"`
	Key      string `json:"key"`
	Copy     int    `json:"copy"` // 1 is the first
	Problem  string `json:"problem"`
	Repaired bool   `json:"repaired"`
}

// Report is what a run found.
type Report struct {
	Started      time.Time     `json:"started"`
	Files        int64         `json:"files"`   // stubs checked
	Objects      int64         `json:"objects"` // objects read (one per copy)
	Bytes        int64         `json:"bytes"`   // bytes read and checked
	BadCount     int           `json:"bad_count"`
	Bad          []Problem     `json:"bad,omitempty"` // the first ReportLimit
	Repaired     int           `json:"repaired"`
	RepairFailed int           `json:"repair_failed"`
	Last         string        `json:"last,omitempty"` // the last file finished: --after resumes from it
	Complete     bool          `json:"complete"`
	Duration     time.Duration `json:"duration_ns"`
}

// ReportLimit bounds the problems a report names.
const ReportLimit = 100

// Scrubber checks one filesystem's archive.
type Scrubber struct {
	Root  *beneath.Root
	Arch  archive.Archive
	Fence dmapi.Fence
	Log   *slog.Logger
}

// Run checks the files under opt.Paths. progress, if set, is told of each
// file finished.
func (s *Scrubber) Run(ctx context.Context, opt Options, progress func(Report)) (*Report, error) {
	rep := &Report{Started: time.Now()}
	thr := throttle.New(opt.Rate)
	paths := slices.Clone(opt.Paths)
	slices.SortFunc(paths, compare)
	for _, p := range paths {
		p, err := beneath.Clean(p)
		if err != nil {
			return rep, err
		}
		err = s.walk(ctx, p, opt.After, func(rel string) error {
			if err := s.file(ctx, rel, opt.Repair, thr, rep); err != nil {
				return err
			}
			rep.Last = rel
			if progress != nil {
				progress(*rep)
			}
			return nil
		})
		if err != nil {
			rep.Duration = time.Since(rep.Started)
			return rep, err
		}
	}
	rep.Complete = true
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

// EachStub calls fn for every migrated or premigrated file of the tree,
// in the order a run goes, with its record.
func (s *Scrubber) EachStub(ctx context.Context, fn func(rel string, rec *stub.Record) error) error {
	return s.walk(ctx, ".", "", func(rel string) error {
		fd, err := s.Root.OpenFD(rel, unix.O_RDONLY|unix.O_NOATIME|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		if err != nil {
			return nil // gone meanwhile
		}
		rec, err := stub.ReadRecord(fd)
		unix.Close(fd)
		if err != nil || rec == nil {
			return nil
		}
		return fn(rel, rec)
	})
}

// walk calls fn for every regular file at or under rel that comes after
// the path after, depth first, names sorted.
func (s *Scrubber) walk(ctx context.Context, rel, after string, fn func(string) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st, err := s.Root.Lstat(rel)
	if err != nil {
		return nil // gone meanwhile
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if after == "" || compare(rel, after) > 0 {
			return fn(rel)
		}
		return nil
	case unix.S_IFDIR:
	default:
		return nil
	}
	if after != "" && compare(rel, after) < 0 && !isAncestor(rel, after) {
		return nil // all of it is before the resume point
	}
	d, err := s.Root.OpenDir(rel)
	if err != nil {
		return nil
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil
	}
	slices.Sort(names)
	for _, n := range names {
		child := n
		if rel != "." {
			child = rel + "/" + n
		}
		if err := s.walk(ctx, child, after, fn); err != nil {
			return err
		}
	}
	return nil
}

// compare orders paths as a depth-first walk with sorted names meets
// them: component by component.
func compare(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

func isAncestor(dir, p string) bool { return dir == "." || strings.HasPrefix(p, dir+"/") }

// file checks every copy of rel's object, and repairs the bad ones from a
// good one when asked.
func (s *Scrubber) file(ctx context.Context, rel string, repair bool, thr *throttle.Throttle, rep *Report) error {
	fd, err := s.Root.OpenFD(rel, unix.O_RDONLY|unix.O_NOATIME|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return nil // gone meanwhile
	}
	defer unix.Close(fd)
	rec, err := stub.ReadRecord(fd)
	if err != nil || rec == nil {
		return nil // resident, or damaged: reconcile's business
	}
	rep.Files++
	if rec.Imported {
		// Its one place is the origin bucket: checked, never repaired.
		if _, err := s.check(ctx, s.Arch, rec, thr, rep); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.note(rep, Problem{Path: rel, Key: rec.OriginBucket + "/" + rec.OriginKey, Copy: 1, Problem: err.Error()})
			s.Log.Warn("scrub: imported object bad", "file", rel, "bucket", rec.OriginBucket, "key", rec.OriginKey, "reason", err)
		}
		return nil
	}
	_, n := archive.CopyOf(s.Arch, 0)
	var bad []int
	var sums []uint32
	good := -1
	for i := range n {
		c, _ := archive.CopyOf(s.Arch, i)
		csums, err := s.check(ctx, c, rec, thr, rep)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			bad = append(bad, i)
			s.note(rep, Problem{Path: rel, Key: rec.Key, Copy: i + 1, Problem: err.Error()})
			s.Log.Warn("scrub: archive copy bad", "file", rel, "key", rec.Key, "copy", i+1, "reason", err)
			continue
		}
		if good < 0 {
			good, sums = i, csums
		}
	}
	if !repair || len(bad) == 0 || good < 0 {
		return nil
	}
	from, _ := archive.CopyOf(s.Arch, good)
	for _, i := range bad {
		to, _ := archive.CopyOf(s.Arch, i)
		err := s.Fence.Run(func() error { return nil }) // checked, not held: a long write of checked bytes
		if err == nil {
			err = archive.Repair(ctx, from, to, rec, sums)
		}
		if err == nil && !stillUses(fd, rec.Key) {
			// Deleted meanwhile: what was written again must go again.
			for _, k := range append([]string{rec.Key}, archive.Companions(rec.Key)...) {
				to.Delete(ctx, k)
			}
			continue
		}
		if err != nil {
			rep.RepairFailed++
			s.Log.Error("scrub: archive copy not repaired", "file", rel, "key", rec.Key, "copy", i+1, "reason", err)
			continue
		}
		rep.Repaired++
		for j := range rep.Bad {
			if rep.Bad[j].Key == rec.Key && rep.Bad[j].Copy == i+1 {
				rep.Bad[j].Repaired = true
			}
		}
		s.Log.Info("scrub: archive copy repaired", "file", rel, "key", rec.Key, "copy", i+1, "from", good+1)
	}
	return nil
}

// check reads one copy's checksums and object, and checks every chunk
// (an imported object's, from its origin, bound to its ETag; one without
// checksums yet, its length only).
func (s *Scrubber) check(ctx context.Context, c archive.Archive, rec *stub.Record, thr *throttle.Throttle, rep *Report) ([]uint32, error) {
	sums, err := archive.ReadSums(ctx, c, rec)
	if err != nil {
		return nil, err
	}
	var body io.ReadCloser
	if rec.Imported {
		var origin *archive.S3
		if origin, err = archive.Origin(c, rec.OriginBucket); err == nil {
			body, err = origin.GetMatch(ctx, rec.OriginKey, 0, -1, rec.ETag)
		}
	} else {
		body, err = c.Get(ctx, rec.Key, 0, -1)
	}
	if err != nil {
		return nil, err
	}
	defer body.Close()
	rep.Objects++
	counted := &countingReader{r: thr.Reader(ctx, body), n: &rep.Bytes}
	if rec.Unverified {
		if n, err := io.Copy(io.Discard, io.LimitReader(counted, rec.Size)); err != nil || n != rec.Size {
			return nil, cmp.Or(err, fmt.Errorf("%s/%s: shorter than imported: %w", rec.OriginBucket, rec.OriginKey, archive.ErrIntegrity))
		}
	} else if err := archive.CheckedCopy(io.Discard, counted, rec, sums); err != nil {
		return nil, err
	}
	var one [1]byte
	if n, _ := counted.Read(one[:]); n > 0 {
		return nil, fmt.Errorf("%s: longer than recorded: %w", rec.Key, archive.ErrIntegrity)
	}
	return sums, nil
}

func (s *Scrubber) note(rep *Report, p Problem) {
	rep.BadCount++
	if len(rep.Bad) < ReportLimit {
		rep.Bad = append(rep.Bad, p)
	}
}

// stillUses reports whether the open file fd still has a name and a
// record naming key.
func stillUses(fd int, key string) bool {
	var st unix.Stat_t
	rec, err := stub.ReadRecord(fd)
	return err == nil && rec != nil && rec.Key == key && unix.Fstat(fd, &st) == nil && st.Nlink > 0
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}
