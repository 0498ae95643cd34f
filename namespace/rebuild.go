package namespace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// RebuildOptions say what a rebuild makes.
type RebuildOptions struct {
	FS             string
	At             time.Time // as things stood then (zero: now)
	IncludeDeleted bool
	DryRun         bool
	Keys           *seal.Keyring // open sealed descriptions and journal batches
}

// RebuildReport is what a rebuild did.
type RebuildReport struct {
	Objects     int           `json:"objects"`             // data objects of the filesystem in the archive
	NoMeta      int           `json:"no_meta"`             // of them, without a readable description (uploaded before descriptions, or damaged)
	Journal     int           `json:"journal"`             // journal entries replayed
	BadJournal  int           `json:"bad_journal"`         // journal entries skipped
	Files       int           `json:"files"`               // stubs made
	Bytes       int64         `json:"bytes"`               // their sizes
	Dirs        int           `json:"dirs"`                // directories made
	Deleted     int           `json:"deleted"`             // deleted versions left out
	Replaced    int           `json:"replaced"`            // replaced versions left out
	Older       int           `json:"older"`               // older versions of placed paths
	Conflicts   []string      `json:"conflicts,omitempty"` // paths that could not be made (a file where a directory must be)
	FirstNoMeta string        `json:"first_no_meta,omitempty"`
	Duration    time.Duration `json:"duration_ns"`
}

// RebuildProgress is reported as a rebuild goes.
type RebuildProgress struct {
	Phase       string // list, describe, make, place
	Done, Total int
}

// stagingName is the directory a rebuild works in, inside the target: it
// makes the tree in its treeName, then makes completeMark to say the tree
// is whole and synced.
const (
	stagingName  = ".cascadefs-rebuild"
	treeName     = "tree"
	completeMark = "complete"
)

// metaReaders is how many descriptions are fetched at once.
const metaReaders = 16

// Rebuild makes, in the empty directory dir, a migrated stub for every
// current file that reached the archive a, as its descriptions and
// journal say. It is safe across a crash: the tree is made in a hidden
// directory inside dir, synced, marked complete, then moved into place
// entry by entry; a rebuild run again finishes a complete tree's move or
// starts an incomplete one afresh.
func Rebuild(ctx context.Context, a archive.Archive, dir string, opt RebuildOptions, progress func(RebuildProgress)) (*RebuildReport, error) {
	started := time.Now()
	if progress == nil {
		progress = func(RebuildProgress) {}
	}
	if opt.At.IsZero() {
		opt.At = time.Now()
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	dfd := int(d.Fd())
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	rep := &RebuildReport{}
	staging := filepath.Join(dir, stagingName)
	if _, err := os.Stat(filepath.Join(staging, completeMark)); err == nil && !opt.DryRun {
		// A rebuild that crashed while it moved its complete tree into
		// place: the move is finished, nothing is fetched again.
		progress(RebuildProgress{Phase: "place"})
		if err := place(dfd, dir); err != nil {
			return nil, err
		}
		rep.Duration = time.Since(started)
		return rep, nil
	}
	for _, n := range names {
		if n != stagingName && !opt.DryRun {
			return nil, fmt.Errorf("%s is not empty (%s): a rebuild makes a whole tree, into an empty directory", dir, n)
		}
	}
	if !opt.DryRun {
		if err := os.RemoveAll(staging); err != nil { // an incomplete rebuild's
			return nil, fmt.Errorf("remove an incomplete rebuild: %w", err)
		}
	}

	progress(RebuildProgress{Phase: "list"})
	var keys []string
	err = a.List(ctx, opt.FS+"/", func(o archive.ObjectInfo) error {
		if o.Incomplete {
			return nil
		}
		if _, ok := archive.ParseKey(opt.FS, o.Key); ok {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the archive: %w", err)
	}
	rep.Objects = len(keys)
	entries, bad, err := ReadJournal(ctx, a, opt.FS, opt.Keys)
	if err != nil {
		return nil, withKeyHint(err)
	}
	rep.Journal, rep.BadJournal = len(entries), bad
	versions, err := describe(ctx, a, keys, opt.Keys, rep, progress)
	if err != nil {
		return nil, err
	}
	plan := MakePlan(versions, entries, opt.At, opt.IncludeDeleted)
	rep.Deleted, rep.Replaced, rep.Older = plan.Deleted, plan.Replaced, plan.Older
	if opt.DryRun {
		for _, v := range plan.Files {
			rep.Files++
			rep.Bytes += v.Meta.Size
		}
		rep.Duration = time.Since(started)
		return rep, nil
	}
	if err := os.MkdirAll(filepath.Join(dir, stagingName, treeName), 0o700); err != nil {
		return nil, fmt.Errorf("rebuild: %w", err)
	}
	stfd, err := unix.Openat(dfd, stagingName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(stfd)
	sfd, err := unix.Openat(stfd, treeName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(sfd)
	made := map[string]bool{}
	for i, v := range plan.Files {
		if i%100 == 0 {
			progress(RebuildProgress{Phase: "make", Done: i, Total: len(plan.Files)})
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		switch err := makeFile(sfd, v, made); {
		case errors.Is(err, errConflict):
			rep.Conflicts = append(rep.Conflicts, v.Path)
		case err != nil:
			return nil, fmt.Errorf("rebuild %s: %w", v.Path, err)
		default:
			rep.Files++
			rep.Bytes += v.Meta.Size
		}
	}
	progress(RebuildProgress{Phase: "make", Done: len(plan.Files), Total: len(plan.Files)})
	// Directories last, deepest first: making their entries changed their times.
	var made2 []string
	for p := range made {
		made2 = append(made2, p)
	}
	sort.Slice(made2, func(i, k int) bool { return strings.Count(made2[i], "/") > strings.Count(made2[k], "/") })
	for _, p := range made2 {
		if err := setDirAttrs(sfd, p, plan.Dirs); err != nil {
			return nil, fmt.Errorf("rebuild %s: %w", p, err)
		}
	}
	rep.Dirs = len(made2)
	if err := unix.Syncfs(sfd); err != nil {
		return nil, err
	}
	if err := failpoint.Hit(failpoint.RebuildBeforeComplete); err != nil {
		return nil, err
	}
	mark, err := unix.Openat(stfd, completeMark, unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	unix.Close(mark)
	if err := unix.Fsync(stfd); err != nil {
		return nil, err
	}
	progress(RebuildProgress{Phase: "place"})
	if err := place(dfd, dir); err != nil {
		return nil, err
	}
	rep.Duration = time.Since(started)
	return rep, nil
}

// withKeyHint says how to give a missing archive key.
func withKeyHint(err error) error {
	if errors.Is(err, seal.ErrNoKey) {
		return fmt.Errorf("%w (give the filesystem's key file with --encryption-key-file)", err)
	}
	return err
}

// describe fetches the descriptions of the data objects keys.
func describe(ctx context.Context, a archive.Archive, keys []string, ring *seal.Keyring, rep *RebuildReport, progress func(RebuildProgress)) ([]*Version, error) {
	versions := make([]*Version, len(keys))
	errs := make([]error, len(keys))
	var next, done int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(metaReaders, len(keys)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= len(keys) || ctx.Err() != nil {
					return
				}
				m, err := GetMeta(ctx, a, keys[i], ring)
				if err == nil {
					versions[i] = &Version{Key: keys[i], Meta: m}
				} else {
					errs[i] = err
				}
				mu.Lock()
				if done++; done%100 == 0 {
					progress(RebuildProgress{Phase: "describe", Done: done, Total: len(keys)})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*Version
	for i, v := range versions {
		switch {
		case v != nil:
			out = append(out, v)
		case errors.Is(errs[i], seal.ErrNoKey):
			// Not a damaged description: a rebuild without it would
			// leave the file out for no good reason.
			return nil, withKeyHint(errs[i])
		default:
			rep.NoMeta++
			if rep.FirstNoMeta == "" {
				rep.FirstNoMeta = keys[i] + ": " + errs[i].Error()
			}
		}
	}
	return out, nil
}

// errConflict: a path needs a directory where a file was made, or the
// other way round.
var errConflict = errors.New("conflict")

// makeFile makes the stub of v inside the staging directory sfd, and
// the directories above it (noted in made).
func makeFile(sfd int, v *Version, made map[string]bool) error {
	if !filepath.IsLocal(v.Path) {
		return errConflict
	}
	dir := filepath.Dir(v.Path)
	var parts []string
	if dir != "." {
		parts = strings.Split(dir, "/")
	}
	pfd, err := unix.Dup(sfd)
	if err != nil {
		return err
	}
	defer func() { unix.Close(pfd) }()
	for i, part := range parts {
		if err := unix.Mkdirat(pfd, part, 0o700); err == nil {
			made[strings.Join(parts[:i+1], "/")] = true
		} else if !errors.Is(err, unix.EEXIST) {
			return err
		}
		next, err := unix.Openat(pfd, part, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) {
			return errConflict
		}
		if err != nil {
			return err
		}
		unix.Close(pfd)
		pfd = next
	}
	fd, err := unix.Openat(pfd, filepath.Base(v.Path), unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EEXIST) {
		return errConflict
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	rec, err := stub.Decode(v.Meta.Record)
	if err != nil {
		return err
	}
	// Whoever can write the archive chooses what a rebuild makes: no
	// set-user-ID or set-group-ID file comes from it.
	attrs := v.Meta.Attrs
	attrs.Mode &^= unix.S_ISUID | unix.S_ISGID
	return MakeStub(fd, rec, attrs)
}

// setDirAttrs gives the directory p (inside sfd) its known attributes, or
// root's 0755.
func setDirAttrs(sfd int, p string, known map[string]DirAttrs) error {
	a, ok := known[p]
	if !ok {
		a = DirAttrs{Mode: 0o755}
	}
	fd, err := unix.Openat(sfd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, a.Mode&0o7777); err != nil {
		return err
	}
	if a.MtimeNs != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(a.MtimeNs)}
		if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
			return err
		}
	}
	return nil
}

// place moves the complete tree from the staging directory into dir,
// entry by entry, and removes the staging directory.
func place(dfd int, dir string) error {
	var names []string
	s, err := os.Open(filepath.Join(dir, stagingName, treeName))
	switch {
	case err == nil:
		defer s.Close()
		if names, err = s.Readdirnames(-1); err != nil {
			return err
		}
	case !errors.Is(err, os.ErrNotExist): // gone: moved and removed before a crash
		return err
	}
	for _, n := range names {
		if err := failpoint.Hit(failpoint.RebuildInsidePlace); err != nil {
			return err
		}
		if err := unix.Renameat2(int(s.Fd()), n, dfd, n, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("move %s into place: %w", n, err)
		}
	}
	if err := unix.Fsync(dfd); err != nil {
		return err
	}
	// The tree is in place: the staging directory goes, the mark last.
	staging := filepath.Join(dir, stagingName)
	if err := os.Remove(filepath.Join(staging, treeName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Remove(filepath.Join(staging, completeMark)); err != nil {
		return err
	}
	if err := os.Remove(staging); err != nil {
		return err
	}
	return unix.Fsync(dfd)
}
