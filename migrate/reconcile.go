package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Reconcile walks a filesystem and its archive side by side, as IBM's
// dsmreconcile does: objects that no stub names (orphans: left by crashes,
// or by anything that went around the DESTROY queue) are listed, and those
// older than the grace period deleted; stubs whose archive copy is missing
// or does not match their record (damaged) are listed and left alone.
//
// Nothing a file may still use is ever deleted. An orphan goes only if:
// it is older than the grace period and older than the start of the run
// (uploads in flight are young); no DESTROY queue entry names it (an upload
// in flight is a prepared entry, read before the walk); no record seen in
// the walk names it; and the inode its key names was seen in the walk
// without that key (a record only ever moves to newer keys), or a second
// walk missed the key too (a file renamed across directories during one
// walk is found by the other).
//
// Memory stays small for millions of files: a stub costs 24 bytes (a hash
// of its key, its size, its chunk count), an inode 8.
type Reconciler struct {
	FS    string // filesystem name: its objects are under FS + "/"
	Root  *beneath.Root
	Arch  archive.Archive
	Fence dmapi.Fence
	// Queued returns the keys named by DESTROY queue entries.
	Queued func() (map[string]bool, error)
}

// ReconcileOptions are the admin's choices.
type ReconcileOptions struct {
	DryRun bool          `json:"dry_run"`
	Grace  time.Duration `json:"grace_ns"` // orphans younger than this are kept
}

// DefaultGrace keeps every orphan younger than a day: an upload in flight
// is never touched.
const DefaultGrace = 24 * time.Hour

// ReconcileProgress is what a running reconcile has done so far.
type ReconcileProgress struct {
	Phase   string `json:"phase"` // walk, list, delete, rewalk
	Files   int64  `json:"files"`
	Stubs   int64  `json:"stubs"`
	Objects int64  `json:"objects"`
}

// Orphan is an archive object no stub names.
type Orphan struct {
	Key        string    `json:"key"`
	Size       int64     `json:"size"`
	Modified   time.Time `json:"modified"`
	Incomplete bool      `json:"incomplete,omitempty"`
	Deleted    bool      `json:"deleted"`
	Kept       string    `json:"kept,omitempty"` // why it was not deleted
}

// Damaged is a stub whose archive copy cannot give its data back.
type Damaged struct {
	Path    string `json:"path"`
	Key     string `json:"key"`
	Problem string `json:"problem"`
}

// ReconcileReport is the outcome of one run. The lists are capped at
// ReportLimit entries; the counts are complete.
type ReconcileReport struct {
	Started       time.Time     `json:"started"`
	Duration      time.Duration `json:"duration_ns"`
	DryRun        bool          `json:"dry_run"`
	Grace         time.Duration `json:"grace_ns"`
	Files         int64         `json:"files"`
	Stubs         int64         `json:"stubs"`
	Objects       int64         `json:"objects"`
	OrphanCount   int64         `json:"orphan_count"`
	OrphanBytes   int64         `json:"orphan_bytes"`
	Deleted       int64         `json:"deleted"`
	DeletedBytes  int64         `json:"deleted_bytes"`
	DamagedCount  int64         `json:"damaged_count"`
	Incomplete    int64         `json:"unreadable"` // entries the walk could not read
	NotOurs       int64         `json:"not_ours"`   // objects under FS/ that cascadefs did not write: never deleted
	Orphans       []Orphan      `json:"orphans"`
	Damaged       []Damaged     `json:"damaged"`
	DeleteFailed  int64         `json:"delete_failed"`
	FirstDelError string        `json:"delete_error,omitempty"`
}

// ours: the data object key base is one cascadefs names (FS/INO/GEN).
func ours(fs, base string) bool {
	_, ok := archive.ParseKey(fs, base)
	return ok
}

// ReportLimit caps the lists of a report.
const ReportLimit = 1000

// stubRef is one stub seen by the walk.
type stubRef struct {
	key       uint64 // hash of the object key
	size      int64
	sumsCount uint32 // chunks, for the checksum object's size
	external  bool   // checksums in a checksum object
	imported  bool   // its data is an object cascadefs did not write: not in FS/
}

// walkResult is what one walk of the tree saw.
type walkResult struct {
	stubs   []stubRef               // sorted by key
	inodes  []uint64                // sorted
	sums    map[uint64]stub.SumsRef // stubs whose checksums are in a checksum object
	damaged []Damaged               // records that do not decode
	// doubtful: inodes whose record could not be read or decoded; their
	// objects are never called orphans.
	doubtful []uint64
	files    int64
	bad      int64
}

func keyHash(k string) uint64 {
	h := fnv.New64a()
	io.WriteString(h, k)
	return h.Sum64()
}

// Run reconciles once.
func (r *Reconciler) Run(ctx context.Context, opt ReconcileOptions, progress func(ReconcileProgress)) (*ReconcileReport, error) {
	if opt.Grace < 0 {
		return nil, fmt.Errorf("reconcile: grace must not be negative")
	}
	rep := &ReconcileReport{Started: time.Now(), DryRun: opt.DryRun, Grace: opt.Grace}
	var prog ReconcileProgress
	var progMu sync.Mutex
	report := func(update func(*ReconcileProgress)) {
		progMu.Lock()
		update(&prog)
		p := prog
		progMu.Unlock()
		if progress != nil {
			progress(p)
		}
	}
	// Read first: an upload that starts later makes an object younger
	// than this run, which is never deleted.
	queued, err := r.Queued()
	if err != nil {
		return nil, fmt.Errorf("reconcile: DESTROY queue: %w", err)
	}
	// Ages are judged by the archive's own clock, never ours against
	// another machine's: an archive whose clock runs days behind would
	// otherwise make an upload in flight look old.
	archNow, err := r.archiveNow(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	if protect.Off(protect.ArchiveClock) {
		archNow = rep.Started
	}
	first, err := r.walk(ctx, func(files, stubs int64) {
		report(func(p *ReconcileProgress) { p.Phase, p.Files, p.Stubs = "walk", files, stubs })
	})
	if err != nil {
		return nil, err
	}
	rep.Files, rep.Stubs, rep.Incomplete = first.files, int64(len(first.stubs)), first.bad
	for _, d := range first.damaged {
		rep.addDamaged(d)
	}

	// The archive, against the walk.
	seen := make([]bool, len(first.stubs))
	sumsSeen := make([]bool, len(first.stubs))
	objectProblems := map[uint64]string{}
	var candidates []Orphan
	prefix := r.FS + "/"
	orphanData := map[string]bool{} // orphan data objects: their descriptions go with them
	err = r.Arch.List(ctx, prefix, func(o archive.ObjectInfo) error {
		rep.Objects++
		if rep.Objects%1000 == 0 {
			report(func(p *ReconcileProgress) { p.Phase, p.Objects = "list", rep.Objects })
		}
		base, part := archive.DataKeyOf(o.Key)
		if o.Incomplete {
			base, part = o.Key, archive.Data
		}
		i, found := first.find(keyHash(base))
		switch {
		case found && o.Incomplete:
			// A referenced key whose upload also left parts: garbage, but
			// Delete would take the object too. Left for the queue.
			return nil
		case found && part == archive.Meta:
			// The file's description: its size is the file's business.
		case found && part == archive.Sums:
			sumsSeen[i] = true
			s := first.stubs[i]
			if !s.external {
				objectProblems[s.key] = "a checksum object exists although the record holds the checksums"
			} else if o.Size != 4*int64(s.sumsCount) {
				objectProblems[s.key] = fmt.Sprintf("checksum object has %d bytes, want %d", o.Size, 4*int64(s.sumsCount))
			}
		case found:
			seen[i] = true
			if s := first.stubs[i]; o.Size != s.size {
				objectProblems[s.key] = fmt.Sprintf("object has %d bytes, the file %d", o.Size, s.size)
			}
		case !ours(r.FS, base) && !protect.Off(protect.NotOurs):
			// Not of cascadefs's making (an object imported in place, a
			// user's own): never an orphan, whatever no stub names it.
			rep.NotOurs++
		default:
			if part == archive.Meta && orphanData[base] {
				return nil // goes with its data object (listed just before it)
			}
			if part == archive.Data && !o.Incomplete {
				orphanData[o.Key] = true
			}
			candidates = append(candidates, Orphan{Key: o.Key, Size: o.Size, Modified: o.Modified, Incomplete: o.Incomplete})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	report(func(p *ReconcileProgress) { p.Phase, p.Objects = "list", rep.Objects })
	for i, s := range first.stubs {
		switch {
		case !seen[i] && !s.imported:
			objectProblems[s.key] = "object missing from the archive"
		case s.external && !sumsSeen[i]:
			objectProblems[s.key] = "checksum object missing from the archive"
		}
	}
	// The checksum objects that exist must match their record's hash.
	for i, s := range first.stubs {
		if s.external && sumsSeen[i] && objectProblems[s.key] == "" {
			if problem := r.checkSums(ctx, first, s); problem != "" {
				objectProblems[s.key] = problem
			}
		}
	}

	// Orphans: which may go.
	cutoff := archNow.Add(-opt.Grace)
	var second *walkResult
	needSecond := false
	for i := range candidates {
		o := &candidates[i]
		switch {
		case queued[o.Key] || queued[dataKey(o.Key)]:
			o.Kept = "named by a DESTROY queue entry (an upload in flight, or bound for deletion)"
		case !o.Modified.Before(cutoff) || !o.Modified.Before(archNow):
			o.Kept = fmt.Sprintf("younger than the grace period (%s)", opt.Grace)
		case first.bad > 0:
			o.Kept = fmt.Sprintf("the walk could not read %d entries: no object is called an orphan", first.bad)
		case contains(first.doubtful, inodeOfKey(r.FS, o.Key)):
			o.Kept = "the record of its file cannot be read"
		case !first.sawInode(inodeOfKey(r.FS, o.Key)):
			needSecond = true
		}
	}
	if needSecond && ctx.Err() == nil {
		report(func(p *ReconcileProgress) { p.Phase = "rewalk" })
		if second, err = r.walk(ctx, nil); err != nil {
			return nil, err
		}
	}
	for i := range candidates {
		o := &candidates[i]
		if o.Kept == "" && !first.sawInode(inodeOfKey(r.FS, o.Key)) {
			switch _, found := second.find(keyHash(dataKey(o.Key))); {
			case second == nil:
				o.Kept = "not checked by a second walk (stopped)"
			case found:
				o.Kept = "named by a stub found by the second walk"
			case second.bad > 0 || contains(second.doubtful, inodeOfKey(r.FS, o.Key)):
				o.Kept = "the second walk could not read all of the tree"
			}
		}
		rep.OrphanCount++
		rep.OrphanBytes += o.Size
	}
	// Damaged stubs, named: by the second walk when it ran (a stub that
	// is still there), else by a walk for their paths.
	if len(objectProblems) > 0 {
		if err := r.nameDamaged(ctx, objectProblems, rep); err != nil {
			return nil, err
		}
	}
	if !opt.DryRun {
		report(func(p *ReconcileProgress) { p.Phase = "delete" })
		for i := range candidates {
			o := &candidates[i]
			if o.Kept != "" || ctx.Err() != nil {
				continue
			}
			err := r.Fence.Run(func() error {
				if err := r.Arch.Delete(ctx, o.Key); err != nil {
					return err
				}
				if orphanData[o.Key] {
					return r.Arch.Delete(ctx, archive.MetaKey(o.Key))
				}
				return nil
			})
			if err != nil {
				rep.DeleteFailed++
				if rep.FirstDelError == "" {
					rep.FirstDelError = err.Error()
				}
				o.Kept = "delete failed: " + err.Error()
				continue
			}
			o.Deleted = true
			rep.Deleted++
			rep.DeletedBytes += o.Size
		}
	}
	for _, o := range candidates {
		if len(rep.Orphans) < ReportLimit {
			rep.Orphans = append(rep.Orphans, o)
		}
	}
	rep.Duration = time.Since(rep.Started)
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	return rep, nil
}

func (rep *ReconcileReport) addDamaged(d Damaged) {
	rep.DamagedCount++
	if len(rep.Damaged) < ReportLimit {
		rep.Damaged = append(rep.Damaged, d)
	}
}

func (w *walkResult) find(h uint64) (int, bool) {
	if w == nil {
		return 0, false
	}
	i := sort.Search(len(w.stubs), func(i int) bool { return w.stubs[i].key >= h })
	return i, i < len(w.stubs) && w.stubs[i].key == h
}

func (w *walkResult) sawInode(ino uint64) bool { return contains(w.inodes, ino) }

func contains(sorted []uint64, v uint64) bool {
	i := sort.Search(len(sorted), func(i int) bool { return sorted[i] >= v })
	return v != 0 && i < len(sorted) && sorted[i] == v
}

// inodeOfKey reads the inode from an object's key; 0 when it has none.
func inodeOfKey(fs, key string) uint64 {
	k, _ := archive.ParseKey(fs, dataKey(key))
	return k.Ino
}

// dataKey is the key of the data object that key belongs to.
func dataKey(key string) string {
	data, _ := archive.DataKeyOf(key)
	return data
}

// checkSums reads a checksum object and matches it against the hash its
// record holds.
func (r *Reconciler) checkSums(ctx context.Context, w *walkResult, s stubRef) string {
	ext, ok := w.sums[s.key]
	if !ok {
		return ""
	}
	switch _, err := archive.ReadSumsOf(ctx, r.Arch, ext); {
	case stub.IsCorrupt(err):
		return "checksum object does not match the record"
	case err != nil:
		return "checksum object unreadable: " + err.Error()
	}
	return ""
}

// walk reads every regular file's record (4 workers over directories).
func (r *Reconciler) walk(ctx context.Context, progress func(files, stubs int64)) (*walkResult, error) {
	res := &walkResult{sums: map[uint64]stub.SumsRef{}}
	var mu sync.Mutex
	var files, stubs atomic.Int64
	unreadable := r.eachFile(ctx, func(rel string, st *unix.Stat_t, rec *stub.Record, err error) {
		n := files.Add(1)
		mu.Lock()
		defer mu.Unlock()
		var foreign *stub.ForeignError
		switch {
		case errors.As(err, &foreign):
			// Not trusted on this file, but its object is in use until no
			// record names it (a restore of stubs with their xattrs).
			res.damaged = append(res.damaged, Damaged{Path: rel, Problem: err.Error()})
			res.doubtful = append(res.doubtful, st.Ino)
			rec := foreign.Rec
			h := keyHash(rec.Key)
			res.stubs = append(res.stubs, stubRef{key: h, size: rec.PackedSize(), sumsCount: rec.SumsCount, external: !rec.InlineSums(), imported: rec.Imported})
			if !rec.InlineSums() {
				res.sums[h] = rec.SumsRef()
			}
			return
		case err != nil && stub.IsCorrupt(err):
			res.damaged = append(res.damaged, Damaged{Path: rel, Problem: "record does not decode: " + err.Error()})
			res.doubtful = append(res.doubtful, st.Ino)
			return
		case err != nil:
			res.bad += notGone(err)
			res.doubtful = append(res.doubtful, st.Ino)
			return
		}
		res.inodes = append(res.inodes, st.Ino)
		switch {
		case rec != nil:
			stubs.Add(1)
			h := keyHash(rec.Key)
			res.stubs = append(res.stubs, stubRef{key: h, size: rec.PackedSize(), sumsCount: rec.SumsCount, external: !rec.InlineSums(), imported: rec.Imported})
			if !rec.InlineSums() {
				res.sums[h] = rec.SumsRef()
			}
		}
		if progress != nil && n%1000 == 0 {
			progress(n, stubs.Load())
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.files = files.Load()
	res.bad += unreadable
	if progress != nil {
		progress(res.files, stubs.Load())
	}
	sort.Slice(res.stubs, func(i, j int) bool { return res.stubs[i].key < res.stubs[j].key })
	// Hard links share one record: one entry per object.
	res.stubs = slices.CompactFunc(res.stubs, func(a, b stubRef) bool { return a.key == b.key })
	sort.Slice(res.inodes, func(i, j int) bool { return res.inodes[i] < res.inodes[j] })
	sort.Slice(res.doubtful, func(i, j int) bool { return res.doubtful[i] < res.doubtful[j] })
	return res, nil
}

// readDir calls fn for each regular file of the directory rel, with its
// record, and queues its subdirectories.
// It returns how many entries it could not read for another reason than
// being gone (renamed or removed meanwhile).
func (r *Reconciler) readDir(rel string, q *dirQueue, fn func(rel string, st *unix.Stat_t, rec *stub.Record, err error)) (unreadable int64) {
	d, err := r.Root.OpenDir(rel)
	if err != nil {
		return notGone(err)
	}
	defer d.Close()
	dfd := int(d.Fd())
	for {
		ents, err := d.ReadDir(1024)
		for _, e := range ents {
			var st unix.Stat_t
			if err := unix.Fstatat(dfd, e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				unreadable += notGone(err)
				continue
			}
			p := path.Join(rel, e.Name())
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				q.push(dirJob{rel: p})
			case unix.S_IFREG:
				rec, err := stub.ReadRecordIn(dfd, e.Name())
				fn(p, &st, rec, err)
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return unreadable + notGone(err)
		}
		if err != nil || len(ents) == 0 {
			return unreadable
		}
	}
}

// notGone counts an error unless it says the entry is gone: a walk that
// could not read part of the tree must not call anything an orphan.
func notGone(err error) int64 {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, beneath.ErrSymlink) {
		return 0
	}
	return 1
}

// nameDamaged finds the paths of the stubs whose archive copy has a
// problem (a walk that keeps only those).
func (r *Reconciler) nameDamaged(ctx context.Context, problems map[uint64]string, rep *ReconcileReport) error {
	var mu sync.Mutex
	r.eachFile(ctx, func(rel string, st *unix.Stat_t, rec *stub.Record, err error) {
		if rec == nil {
			return
		}
		if problem := problems[keyHash(rec.Key)]; problem != "" {
			mu.Lock()
			rep.addDamaged(Damaged{Path: rel, Key: rec.Key, Problem: problem})
			mu.Unlock()
		}
	})
	sort.Slice(rep.Damaged, func(i, j int) bool { return rep.Damaged[i].Path < rep.Damaged[j].Path })
	return ctx.Err()
}

// eachFile calls fn, from several goroutines, for every regular file of
// the tree with its record.
func (r *Reconciler) eachFile(ctx context.Context, fn func(rel string, st *unix.Stat_t, rec *stub.Record, err error)) (unreadable int64) {
	var bad atomic.Int64
	q := &dirQueue{}
	q.cond = sync.NewCond(&q.mu)
	q.push(dirJob{rel: "."})
	var wg sync.WaitGroup
	for range scanWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job, ok := q.pop(); ok; job, ok = q.pop() {
				if ctx.Err() == nil {
					bad.Add(r.readDir(job.rel, q, fn))
				}
				q.done()
			}
		}()
	}
	wg.Wait()
	return bad.Load()
}

// clockPrefix is where reconcile leaves a marker object for a moment, to
// read the archive's clock; outside every filesystem's prefix.
const clockPrefix = ".cascadefs-clock/"

// archiveNow is the archive's clock now: the time it gives a marker
// object stored and listed at once (then deleted).
func (r *Reconciler) archiveNow(ctx context.Context) (time.Time, error) {
	var b [8]byte
	rand.Read(b[:])
	key := clockPrefix + r.FS + "-" + hex.EncodeToString(b[:])
	if _, err := r.Arch.Put(ctx, key, strings.NewReader("clock"), 5); err != nil {
		return time.Time{}, fmt.Errorf("read the archive's clock: %w", err)
	}
	defer r.Arch.Delete(context.WithoutCancel(ctx), key)
	var now time.Time
	err := r.Arch.List(ctx, key, func(o archive.ObjectInfo) error {
		if o.Key == key {
			now = o.Modified
		}
		return nil
	})
	if err == nil && now.IsZero() {
		err = errors.New("the marker object is not listed")
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read the archive's clock: %w", err)
	}
	return now, nil
}
