package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/stub"
)

func newMigrator(t *testing.T, root string) *Migrator {
	t.Helper()
	arch, err := archive.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return New(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.OpenGate{}, fakes.KeptGarbage{}, Config{FS: "t", ReleaseWait: 5 * time.Second}, log)
}

// writeFile writes size random bytes at rel and dates its last use age ago.
func writeFile(t *testing.T, root, rel string, size int, age time.Duration) []byte {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-age)
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
	return data
}

func paths(cs []Candidate) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.Path)
	}
	return strings.Join(s, " ")
}

func TestScanRanksLeastRecentlyUsedAndHonoursThePolicy(t *testing.T) {
	root := t.TempDir()
	day := 24 * time.Hour
	writeFile(t, root, "old", 64<<10, 30*day)
	writeFile(t, root, "older", 64<<10, 60*day)
	writeFile(t, root, "big-recent", 1<<20, 2*day) // 16x the size at 1/15 the age: ranks above old
	writeFile(t, root, "fresh", 64<<10, time.Minute)
	writeFile(t, root, "tiny", 100, 90*day)
	writeFile(t, root, "keep.db", 64<<10, 90*day)
	writeFile(t, root, "tmp/x", 64<<10, 90*day)
	writeFile(t, root, "sub/deep/file", 64<<10, 10*day)
	os.WriteFile(filepath.Join(root, "empty"), nil, 0o644)

	p := testPolicy()
	p.MinAge, p.MinSize, p.Exclude = time.Hour, 4096, []string{"*.db", "tmp"}
	s, err := p.Scan(context.Background(), fakes.Root(t, root), ScanOptions{Keep: 100}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := paths(s.Candidates), "older big-recent old sub/deep/file"; got != want {
		t.Fatalf("candidates %q, want %q", got, want)
	}
	if s.Files != 9 || s.Eligible != 4 {
		t.Fatalf("files %d eligible %d, want 9 and 4", s.Files, s.Eligible)
	}
	// Usage counts everything, excluded or not.
	if s.Usage < 64<<10*6+1<<20 {
		t.Fatalf("usage %d too small", s.Usage)
	}

	// The bound: only as many as add up to Want.
	s, err = p.Scan(context.Background(), fakes.Root(t, root), ScanOptions{Want: 100 << 10, Keep: 1}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(s.Candidates); got != "older big-recent" {
		t.Fatalf("bounded candidates %q", got)
	}

	// A leader of 100 KiB: the 64 KiB files would free nothing.
	p.Leader = 100 << 10
	s, _ = p.Scan(context.Background(), fakes.Root(t, root), ScanOptions{Keep: 100}, time.Now())
	if got := paths(s.Candidates); got != "big-recent" {
		t.Fatalf("candidates with a leader %q, want only big-recent", got)
	}
	p.Leader = 0

	// A premigrated file goes first, whatever its age.
	m := newMigrator(t, root)
	if _, err := m.Migrate(context.Background(), "sub/deep/file", 0, true); err != nil {
		t.Fatal(err)
	}
	s, _ = p.Scan(context.Background(), fakes.Root(t, root), ScanOptions{Keep: 100}, time.Now())
	if !strings.HasPrefix(paths(s.Candidates), "sub/deep/file ") || !s.Candidates[0].Instant {
		t.Fatalf("premigrated file not first: %q", paths(s.Candidates))
	}
}

func TestScanStopsWithItsContext(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "a/b", 10, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := testPolicy()
	if _, err := p.Scan(ctx, fakes.Root(t, root), ScanOptions{}, time.Now()); !errors.Is(err, context.Canceled) {
		t.Fatalf("scan with a cancelled context: %v", err)
	}
}

// A filesystem over its quota: one check brings it under low, oldest
// files first, every file still whole (data or a verified archive copy).
func TestMonitorCycleBringsUsageUnderLow(t *testing.T) {
	root := t.TempDir()
	day := 24 * time.Hour
	content := map[string][]byte{}
	for i, name := range []string{"f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"} {
		content[name] = writeFile(t, root, name, 256<<10, time.Duration(10-i)*day) // f0 oldest
	}
	p := testPolicy()
	p.Quota, p.High, p.Low, p.Interval = 2<<20, 70, 40, time.Hour
	p.Premigrate = 15 // after the cycle, keep ~300 KiB premigrated: 2 more files
	mig := newMigrator(t, root)
	mon := NewMonitor(fakes.Root(t, root), p, mig, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mon.Start(context.Background())
	defer mon.Close()
	// OutOfSpace waits for a check; the first one is the start's.
	sp, err := mon.OutOfSpace(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	st := mon.Status()
	if st.LastCycle == nil {
		t.Fatalf("no cycle at usage %d of %d", sp.Usage, sp.Capacity)
	}
	if sp.Usage > p.Quota*40/100 {
		t.Fatalf("usage %d after the cycle, over low %d", sp.Usage, p.Quota*40/100)
	}
	states := map[string]stub.State{}
	for name := range content {
		states[name] = stateOf(t, filepath.Join(root, name))
	}
	// 8 x 256 KiB = 2 MiB, low = 819 KiB: at least 5 files go, the oldest.
	for _, name := range []string{"f0", "f1", "f2", "f3", "f4"} {
		if states[name] != stub.Migrated {
			t.Errorf("%s is %v, want migrated (states %v)", name, states[name], states)
		}
	}
	if states["f7"] != stub.Resident && states["f7"] != stub.Premigrated {
		t.Errorf("newest file f7 is %v", states["f7"])
	}
	if st.LastCycle.Premigrated == 0 {
		t.Errorf("nothing premigrated after the cycle: %+v", st.LastCycle)
	}
	if st.MeasuredAt.IsZero() || len(st.Next) == 0 {
		t.Errorf("measured at %v, next candidates %d", st.MeasuredAt, len(st.Next))
	}
	// A premigrated file is released first by the next cycle.
	var premigrated string
	for name, s := range states {
		if s == stub.Premigrated {
			premigrated = name
		}
	}
	if premigrated == "" {
		t.Fatalf("no premigrated file: %v", states)
	}
	big := writeFile(t, root, "new", 1<<20, 0)
	content["new"] = big
	if _, err := mon.OutOfSpace(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(t, filepath.Join(root, premigrated)); got != stub.Migrated {
		t.Errorf("premigrated %s is %v after the second cycle", premigrated, got)
	}
	if c := mon.Status().LastCycle; c.Uploaded >= c.Bytes+c.PremigratedB {
		t.Errorf("second cycle uploaded %d for %d released: no instant release", c.Uploaded, c.Bytes)
	}
	// Every byte is still there: resident, or in the archive.
	for name, want := range content {
		if got := readBack(t, mig, root, name); !bytes.Equal(got, want) {
			t.Errorf("%s reads back wrong", name)
		}
	}
}

func TestMonitorOutOfSpaceThatCannotBeFreed(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "young", 512<<10, 0)
	p := testPolicy()
	p.Quota, p.MinAge, p.Interval = 1<<20, time.Hour, time.Hour
	mon := NewMonitor(fakes.Root(t, root), p, newMigrator(t, root), slog.New(slog.NewTextHandler(io.Discard, nil)))
	mon.Start(context.Background())
	defer mon.Close()
	if _, err := mon.OutOfSpace(context.Background(), 100<<10); err != nil {
		t.Fatalf("100 KiB fits in the quota: %v", err)
	}
	if _, err := mon.OutOfSpace(context.Background(), 1<<20); !errors.Is(err, dmapi.ErrNoSpace) {
		t.Fatalf("1 MiB more with nothing old enough to migrate: %v, want ErrNoSpace", err)
	}
	if got := stateOf(t, filepath.Join(root, "young")); got != stub.Resident {
		t.Fatalf("file within min-age is %v", got)
	}
}

func stateOf(t *testing.T, p string) stub.State {
	t.Helper()
	rec, err := stub.ReadRecordAt(p)
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil {
		return stub.Resident
	}
	return rec.State
}

// readBack returns a file's bytes: from the file if resident, else from
// its archive object.
func readBack(t *testing.T, m *Migrator, root, rel string) []byte {
	t.Helper()
	rec, err := stub.ReadRecordAt(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.State == stub.Premigrated {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	r, err := m.arch.Get(context.Background(), rec.Key, 0, rec.Size)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, _ := io.ReadAll(r)
	return b
}

// hangingMigrater stands for an archive that stops answering.
type hangingMigrater struct{ release chan struct{} }

func (h hangingMigrater) MigrateIdle(ctx context.Context, rel string, ino uint64, premigrateOnly bool) (Result, error) {
	select {
	case <-h.release:
	case <-ctx.Done():
	}
	return Result{}, errors.New("archive hangs")
}

// A cycle that finishes no file is reported stuck, for the watchdog.
func TestMonitorStuck(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "f", 64<<10, 48*time.Hour)
	p := testPolicy()
	p.Quota, p.Interval = 64<<10, time.Hour // 100% used: a cycle at once
	h := hangingMigrater{release: make(chan struct{})}
	mon := NewMonitor(fakes.Root(t, root), p, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mon.Start(context.Background())
	defer mon.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !mon.Stuck(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a hanging cycle is not reported stuck")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(h.release)
	for mon.Stuck(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still stuck after the archive answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// After Close, an out-of-space event is answered at once (the cluster
// sends it to the next owner).
func TestMonitorClosedAnswersAtOnce(t *testing.T) {
	root := t.TempDir()
	mon := NewMonitor(fakes.Root(t, root), testPolicy(), newMigrator(t, root), slog.New(slog.NewTextHandler(io.Discard, nil)))
	mon.Start(context.Background())
	mon.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := mon.OutOfSpace(ctx, 1); !errors.Is(err, dmapi.ErrClosed) {
		t.Fatalf("out of space after close: %v, want ErrClosed", err)
	}
}

// The space monitor's uploads yield to recalls (Yield before each read of
// the upload); an admin's migration does not.
func TestBackgroundUploadsYield(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "bg", 1<<20, time.Hour)
	writeFile(t, root, "admin", 1<<20, time.Hour)
	m := newMigrator(t, root)
	var yields atomic.Int32
	m.Yield = func(context.Context) { yields.Add(1) }
	if _, err := m.Migrate(context.Background(), "admin", 0, true); err != nil {
		t.Fatal(err)
	}
	if n := yields.Load(); n != 0 {
		t.Fatalf("an admin migration yielded %d times", n)
	}
	if _, err := m.MigrateIdle(context.Background(), "bg", 0, true); err != nil {
		t.Fatal(err)
	}
	if yields.Load() == 0 {
		t.Fatal("a monitor upload never yielded")
	}
}

// An out-of-space cycle's uploads do not yield: the recall or writer that
// waits for the space would hold back the upload that frees it.
func TestOutOfSpaceUploadsDoNotYield(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "f", 1<<20, time.Hour)
	m := newMigrator(t, root)
	var yields atomic.Int32
	m.Yield = func(context.Context) { yields.Add(1) }
	ctx := context.WithValue(context.Background(), waitedKey{}, true)
	if _, err := m.MigrateIdle(ctx, "f", 0, true); err != nil {
		t.Fatal(err)
	}
	if n := yields.Load(); n != 0 {
		t.Fatalf("an upload somebody waits for yielded %d times", n)
	}
}

// waitedSpy records whether each migration's context says somebody waits.
type waitedSpy struct {
	mu     sync.Mutex
	waited []bool
}

func (s *waitedSpy) MigrateIdle(ctx context.Context, rel string, ino uint64, premigrateOnly bool) (Result, error) {
	s.mu.Lock()
	s.waited = append(s.waited, ctx.Value(waitedKey{}) != nil)
	s.mu.Unlock()
	return Result{}, errors.New("not migrated (spy)")
}

// A cycle run for an out-of-space request marks its migrations; a
// periodic one does not.
func TestOutOfSpaceCycleMarksItsUploads(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "f", 512<<10, 48*time.Hour)
	p := testPolicy()
	p.Quota, p.Interval = 1<<20, time.Hour
	spy := &waitedSpy{}
	mon := NewMonitor(fakes.Root(t, root), p, spy, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mon.Start(context.Background())
	defer mon.Close()
	mon.OutOfSpace(context.Background(), 900<<10) // fails: the spy migrates nothing
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if len(spy.waited) == 0 || !spy.waited[len(spy.waited)-1] {
		t.Fatalf("migrations of an out-of-space cycle: %v, want the last marked", spy.waited)
	}
}

// Recalls that take usage past the high threshold wake the monitor at
// once (its interval here is an hour): a cycle runs and brings usage
// under low again.
func TestRecallsPastHighWakeTheMonitor(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "old", 500<<10, 48*time.Hour)
	p := testPolicy()
	p.Quota, p.Interval = 1<<20, time.Hour
	cycled := make(chan Cycle, 4)
	mon := NewMonitor(fakes.Root(t, root), p, newMigrator(t, root), slog.New(slog.NewTextHandler(io.Discard, nil)))
	mon.Cycled = func(c Cycle) { cycled <- c }
	mon.Start(context.Background())
	defer mon.Close()
	for deadline := time.Now().Add(5 * time.Second); mon.Status().Usage == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no first check") // it runs at Start, under high
		}
	}
	writeFile(t, root, "recalled", 300<<10, 24*time.Hour) // as a recall writes, unseen
	mon.Grew(100 << 10)                                   // still under high: no check
	select {
	case c := <-cycled:
		t.Fatalf("a cycle under the high threshold: %+v", c)
	case <-time.After(300 * time.Millisecond):
	}
	mon.Grew(200 << 10) // 800 KiB of 1 MiB: past high (70%)
	select {
	case c := <-cycled:
		if c.Files == 0 {
			t.Fatalf("the cycle migrated nothing: %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("recalls past high did not wake the monitor")
	}
}

// testPolicy is a whole policy as settings.Defaults makes one (package
// settings imports this one, so its tests cannot ask it).
func testPolicy() Policy {
	p := DefaultPolicy()
	p.High, p.Low, p.Interval, p.MinSize = 70, 60, time.Minute, 1
	return p
}
