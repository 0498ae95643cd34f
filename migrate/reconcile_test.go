package migrate

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// reconcileSetup: a tree of resident, premigrated, migrated, renamed and
// hard-linked files, and an archive holding their objects plus orphans.
type reconcileSetup struct {
	root, archDir string
	m             *Migrator
	r             *Reconciler
	queued        map[string]bool
	referenced    []string
}

func newReconcileSetup(t *testing.T) *reconcileSetup {
	root := t.TempDir()
	m := newMigrator(t, root)
	s := &reconcileSetup{root: root, m: m, archDir: strings.TrimPrefix(m.arch.String(), "file://"), queued: map[string]bool{}}
	s.r = &Reconciler{FS: "t", Root: m.root, Arch: m.arch, Queued: func() (map[string]bool, error) { return s.queued, nil }}
	ctx := context.Background()
	writeFile(t, root, "resident", 1000, 0)
	for _, f := range []struct {
		rel        string
		size       int
		premigrate bool
	}{{"pre", 5000, true}, {"mig", 7000, false}, {"big", 70 << 20, false}, {"d/moved", 3000, false}, {"linked", 4000, false}} {
		writeFile(t, root, f.rel, f.size, 0)
		res, err := m.Migrate(ctx, f.rel, 0, f.premigrate)
		if err != nil {
			t.Fatal(err)
		}
		s.referenced = append(s.referenced, res.Key)
	}
	if err := os.Rename(filepath.Join(root, "d/moved"), filepath.Join(root, "moved-here")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "linked"), filepath.Join(root, "d/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "linked"), filepath.Join(root, "d/link3")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "linked")); err != nil { // two other names keep it
		t.Fatal(err)
	}
	return s
}

// orphan puts an object no stub names, dated age ago.
func (s *reconcileSetup) orphan(t *testing.T, key string, age time.Duration) {
	t.Helper()
	p := filepath.Join(s.archDir, key)
	os.MkdirAll(filepath.Dir(p), 0o700)
	if err := os.WriteFile(p, []byte("orphan bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-age)
	os.Chtimes(p, when, when)
}

func (s *reconcileSetup) exists(key string) bool {
	_, err := os.Stat(filepath.Join(s.archDir, key))
	return err == nil
}

func inoOf(t *testing.T, p string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestReconcileDeletesOnlyOldOrphans(t *testing.T) {
	s := newReconcileSetup(t)
	old := 48 * time.Hour
	// The inode of a live file, an older key of it (a stale copy whose
	// DESTROY was lost): the record names another key, so it may go.
	stale := fmt.Sprintf("t/%d/1-stale", inoOf(t, filepath.Join(s.root, "pre")))
	s.orphan(t, stale, old)
	s.orphan(t, archive.SumsKey(stale), old)
	gone := "t/999999999/2-gone" // a file removed while its DESTROY was lost
	s.orphan(t, gone, old)
	young := fmt.Sprintf("t/%d/3-young", inoOf(t, filepath.Join(s.root, "resident")))
	s.orphan(t, young, time.Hour)
	inFlight := fmt.Sprintf("t/%d/4-uploading", inoOf(t, filepath.Join(s.root, "resident")))
	s.orphan(t, inFlight, old)
	s.queued[inFlight] = true
	temp := fmt.Sprintf("t/%d/.put-5-dead-123", inoOf(t, filepath.Join(s.root, "resident")))
	s.orphan(t, temp, old)
	// A file whose record does not decode: nothing of its inode is an orphan.
	writeFile(t, s.root, "corrupt", 100, 0)
	if err := unix.Setxattr(filepath.Join(s.root, "corrupt"), stub.XattrName, []byte("garbage"), 0); err != nil {
		t.Fatal(err)
	}
	doubtful := fmt.Sprintf("t/%d/6-doubtful", inoOf(t, filepath.Join(s.root, "corrupt")))
	s.orphan(t, doubtful, old)

	dry, err := s.r.Run(context.Background(), ReconcileOptions{DryRun: true, Grace: DefaultGrace}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if dry.OrphanCount != 7 || dry.Deleted != 0 || dry.DamagedCount != 1 {
		t.Fatalf("dry run: %d orphans, %d deleted, %d damaged (%+v)", dry.OrphanCount, dry.Deleted, dry.DamagedCount, dry.Damaged)
	}
	for _, k := range []string{stale, gone, young, inFlight, temp} {
		if !s.exists(k) {
			t.Fatalf("dry run deleted %s", k)
		}
	}

	rep, err := s.r.Run(context.Background(), ReconcileOptions{Grace: DefaultGrace}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{stale, archive.SumsKey(stale), gone, temp} {
		if s.exists(k) {
			t.Errorf("orphan %s kept", k)
		}
	}
	for _, k := range []string{young, inFlight, doubtful} {
		if !s.exists(k) {
			t.Errorf("%s deleted: it is young or in flight", k)
		}
	}
	for _, k := range s.referenced {
		if !s.exists(k) {
			t.Errorf("referenced object %s deleted", k)
		}
	}
	if rep.Deleted != 4 || rep.Stubs != 5 || rep.Files != 8 || rep.DamagedCount != 1 {
		t.Errorf("report: deleted %d stubs %d files %d damaged %d", rep.Deleted, rep.Stubs, rep.Files, rep.DamagedCount)
	}
	// Everything still reads back.
	for _, rel := range []string{"pre", "mig", "big", "moved-here", "d/link"} {
		readBack(t, s.m, s.root, rel)
	}
}

func TestReconcileReportsDamagedStubs(t *testing.T) {
	s := newReconcileSetup(t)
	recOf := func(rel string) *stub.Record {
		rec, err := stub.ReadRecordAt(filepath.Join(s.root, rel))
		if err != nil || rec == nil {
			t.Fatalf("%s: %v", rel, err)
		}
		return rec
	}
	os.Remove(filepath.Join(s.archDir, recOf("mig").Key))                                   // missing
	os.WriteFile(filepath.Join(s.archDir, recOf("moved-here").Key), []byte("short"), 0o600) // wrong size
	sums := filepath.Join(s.archDir, archive.SumsKey(recOf("big").Key))
	b, _ := os.ReadFile(sums)
	b[3] ^= 1
	os.WriteFile(sums, b, 0o600) // checksums that do not match the record
	rep, err := s.r.Run(context.Background(), ReconcileOptions{Grace: 0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range rep.Damaged {
		got[d.Path] = d.Problem
	}
	want := map[string]string{"mig": "missing", "moved-here": "bytes", "big": "does not match"}
	if rep.DamagedCount != int64(len(want)) {
		t.Errorf("%d damaged, want %d: %v", rep.DamagedCount, len(want), got)
	}
	for p, w := range want {
		if !strings.Contains(got[p], w) {
			t.Errorf("%s: problem %q, want one about %q", p, got[p], w)
		}
	}
	if rep.Deleted != 0 {
		t.Errorf("deleted %d objects while only stubs were damaged", rep.Deleted)
	}
	for _, rel := range []string{"pre", "d/link"} {
		readBack(t, s.m, s.root, rel)
	}
}

func TestReconcileRefusesNegativeGrace(t *testing.T) {
	r := &Reconciler{Arch: mustDir(t)}
	if _, err := r.Run(context.Background(), ReconcileOptions{Grace: -time.Second}, nil); err == nil {
		t.Error("negative grace accepted")
	}
}

func mustDir(t *testing.T) archive.Archive {
	a, err := archive.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// skewedArchive lists objects with times off by skew: an archive server
// whose clock is not ours.
type skewedArchive struct {
	archive.Archive
	skew time.Duration
}

func (a skewedArchive) List(ctx context.Context, prefix string, fn func(archive.ObjectInfo) error) error {
	return a.Archive.List(ctx, prefix, func(o archive.ObjectInfo) error {
		o.Modified = o.Modified.Add(a.skew)
		return fn(o)
	})
}

// Ages are the archive's: with its clock two days behind ours, an orphan
// stored an hour ago is still young (judged by our clock it was older
// than the grace period and deleted), and one stored two days ago is old
// even with its clock two days ahead.
func TestReconcileJudgesAgesByTheArchiveClock(t *testing.T) {
	for _, skew := range []time.Duration{-48 * time.Hour, 48 * time.Hour} {
		s := newReconcileSetup(t)
		s.r.Arch = skewedArchive{s.r.Arch, skew}
		ino := inoOf(t, filepath.Join(s.root, "resident"))
		young := fmt.Sprintf("t/%d/1-young", ino)
		s.orphan(t, young, time.Hour)
		old := fmt.Sprintf("t/%d/2-old", ino)
		s.orphan(t, old, 72*time.Hour)
		if _, err := s.r.Run(context.Background(), ReconcileOptions{Grace: DefaultGrace}, nil); err != nil {
			t.Fatal(err)
		}
		if !s.exists(young) {
			t.Errorf("archive clock off by %v: an orphan an hour old was deleted", skew)
		}
		if s.exists(old) {
			t.Errorf("archive clock off by %v: an orphan three days old was kept", skew)
		}
		if entries, _ := os.ReadDir(filepath.Join(s.archDir, ".cascadefs-clock")); len(entries) != 0 {
			t.Errorf("clock markers left: %v", entries)
		}
	}
}
