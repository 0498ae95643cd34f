package recall_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/recall"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// faulty wraps an archive: it can break the first GET after some bytes
// (a transient network fault) or flip one byte of every GET that covers it.
type faulty struct {
	archive.Archive
	mu        sync.Mutex
	gets      int
	breakOnce int64         // break the first GET after this many bytes (0: never)
	flipAt    int64         // object offset of a byte to corrupt (-1: none)
	slow      time.Duration // pause before each Read of a body
}

func (a *faulty) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	body, err := a.Archive.Get(ctx, key, off, length)
	if _, part := archive.DataKeyOf(key); err != nil || part != archive.Data {
		return body, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gets++
	var r io.Reader = body
	if a.breakOnce > 0 {
		r = io.MultiReader(io.LimitReader(body, a.breakOnce), errReader{io.ErrUnexpectedEOF})
		a.breakOnce = 0
	}
	if a.flipAt >= off {
		r = &flipper{r: r, pos: off, at: a.flipAt}
	}
	if a.slow > 0 {
		r = slowReader{r, a.slow}
	}
	return struct {
		io.Reader
		io.Closer
	}{r, body}, nil
}

type slowReader struct {
	r io.Reader
	d time.Duration
}

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.d)
	return s.r.Read(p)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

type flipper struct {
	r       io.Reader
	pos, at int64
}

func (f *flipper) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.pos && f.at < f.pos+int64(n) {
		p[f.at-f.pos] ^= 0xff
	}
	f.pos += int64(n)
	return n, err
}

// migrated makes a migrated stub of random data in a fresh directory.
func migrated(t *testing.T, size int64) (root string, arch *faulty, data []byte, ino uint64) {
	t.Helper()
	root = t.TempDir()
	dir, err := archive.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	arch = &faulty{Archive: dir, flipAt: -1}
	data = make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(root, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	m := migrate.New(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.OpenGate{}, fakes.KeptGarbage{}, migrate.Config{FS: "t", ReleaseWait: 5 * time.Second}, slog.Default())
	if _, err := m.Migrate(context.Background(), "f", 0, false); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "f"), &st); err != nil {
		t.Fatal(err)
	}
	return root, arch, data, st.Ino
}

func newManager(t *testing.T, root string, arch archive.Archive) *recall.Manager {
	m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{}, recall.Config{SmallFile: 1 << 20, Window: 1 << 20, MaxWindow: 256 << 20}, slog.Default())
	t.Cleanup(m.Close)
	return m
}

func recordState(t *testing.T, path string) (stub.State, *os.File) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	rec, err := stub.ReadRecord(int(f.Fd()))
	if err != nil || rec == nil {
		t.Fatalf("record: %v %v", rec, err)
	}
	return rec.State, f
}

// A GET that breaks off is resumed where it broke; the reader gets all bytes.
func TestRecallResumesBrokenStream(t *testing.T) {
	size := int64(3<<20 + 5)
	root, arch, data, ino := migrated(t, size)
	arch.breakOnce = 300 << 10 // in the middle of the second chunk
	m := newManager(t, root, arch)
	ev := &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: size}
	if err := m.Handle(context.Background(), ev); err != nil {
		t.Fatalf("recall: %v", err)
	}
	m.Close() // wait for prefetches
	got, _ := os.ReadFile(filepath.Join(root, "f"))
	if !bytes.Equal(got, data) {
		t.Fatal("recalled bytes differ")
	}
	if state, _ := recordState(t, filepath.Join(root, "f")); state != stub.Premigrated {
		t.Fatalf("state after full recall: %s", state)
	}
	if arch.gets < 2 {
		t.Fatalf("%d GETs: the broken stream was not resumed", arch.gets)
	}
}

// A corrupt byte in the archive: the reader gets ErrIntegrity, and the
// chunk that holds it is never written (no wrong byte reaches the file).
func TestRecallRefusesCorruptChunk(t *testing.T) {
	size := int64(3<<20 + 5)
	root, arch, data, ino := migrated(t, size)
	bad := int64(1<<20 + 10)
	arch.flipAt = bad
	m := newManager(t, root, arch)
	ev := &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: size}
	err := m.Handle(context.Background(), ev)
	if !errors.Is(err, recall.ErrIntegrity) {
		t.Fatalf("recall of a corrupt object: %v, want ErrIntegrity", err)
	}
	m.Close()
	state, f := recordState(t, filepath.Join(root, "f"))
	if state != stub.Migrated {
		t.Fatalf("state after a failed recall: %s", state)
	}
	chunk := int64(stub.DefaultChunkSize)
	start := bad / chunk * chunk
	if hole, err := stub.FirstHole(int(f.Fd()), start, start+chunk); err != nil || hole != start {
		t.Fatalf("corrupt chunk was written (first hole %d, err %v)", hole, err)
	}
	// What was written before it is right.
	got := make([]byte, start)
	f.ReadAt(got, 0)
	if hole, _ := stub.FirstHole(int(f.Fd()), 0, start); hole == start && !bytes.Equal(got, data[:start]) {
		t.Fatal("chunks before the corrupt one differ")
	}
	if arch.gets < 2 {
		t.Fatalf("%d GETs: a checksum mismatch is retried before it is final", arch.gets)
	}
}

// A migration waits for a recall stream that outlives the event that
// started it (its prefetch), so it never punches under a writer.
func TestStreamHoldsTheRight(t *testing.T) {
	size := int64(8 << 20)
	root, arch, _, ino := migrated(t, size)
	arch.slow = 5 * time.Millisecond // streams take a while
	rights := &dmapi.Rights{}
	m := recall.NewManager(fakes.Root(t, root), arch, rights, fakes.KeptGarbage{}, recall.Config{SmallFile: 1 << 20, Window: 1 << 20, MaxWindow: 256 << 20}, slog.Default())
	defer m.Close()
	ev := &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: 1 << 20}
	if err := m.Handle(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	// Whatever streams are still running, the exclusive right is only
	// granted once they are done: the file then has no stream writing.
	release := rights.Exclusive(ino)
	defer release()
	f, _ := os.Open(filepath.Join(root, "f"))
	defer f.Close()
	var st1, st2 unix.Stat_t
	unix.Fstat(int(f.Fd()), &st1)
	time.Sleep(100 * time.Millisecond)
	unix.Fstat(int(f.Fd()), &st2)
	if st1.Blocks != st2.Blocks {
		t.Fatalf("a recall stream wrote while the exclusive right was held (%d -> %d blocks)", st1.Blocks, st2.Blocks)
	}
}

// A truncate of a premigrated file that a release punches between the
// recall's look and its drop recalls the file first and succeeds (it
// failed with "record changed to migrated" before).
func TestTruncateRacingARelease(t *testing.T) {
	root := t.TempDir()
	dir, err := archive.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	path := filepath.Join(root, "f")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	mig := migrate.New(fakes.Root(t, root), dir, &dmapi.Rights{}, fakes.OpenGate{}, fakes.KeptGarbage{}, migrate.Config{FS: "t", ReleaseWait: 5 * time.Second}, slog.Default())
	if _, err := mig.Migrate(context.Background(), "f", 0, true); err != nil {
		t.Fatal(err)
	}
	if st, _ := recordState(t, path); st != stub.Premigrated {
		t.Fatalf("state %s, want premigrated", st)
	}
	var st unix.Stat_t
	unix.Stat(path, &st)
	m := newManager(t, root, dir)
	released := false
	recall.SetBeforeDrop(m, func() {
		if released {
			return
		}
		released = true
		if _, err := mig.Migrate(context.Background(), "f", 0, false); err != nil {
			t.Errorf("release: %v", err)
		}
	})
	ev := &dmapi.Event{Type: dmapi.Truncate, FS: "t", Path: "f", Ino: st.Ino, Offset: 0, Length: -1}
	if err := m.Handle(context.Background(), ev); err != nil {
		t.Fatalf("truncate event: %v", err)
	}
	if !released {
		t.Fatal("the release did not run in the window")
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the event the file holds %d bytes (err %v), not the data", len(got), err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	if rec, err := stub.ReadRecord(int(f.Fd())); err != nil || rec != nil {
		t.Fatalf("file not resident: record %v, %v", rec, err)
	}
}

// A reader waiting on an admin's stream does not make that stream hold
// back for readers: it would hold back for the reader itself, a chunk at
// a time (200 ms each). 32 chunks at 10 ms each must take well under the
// 6 s the stream would take if it yielded.
func TestReaderOnAdminStreamIsNotHeldBack(t *testing.T) {
	const size = 8 << 20
	root, arch, data, ino := migrated(t, size)
	arch.slow = 10 * time.Millisecond
	m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{},
		recall.Config{SmallFile: 1 << 20, Window: 64 << 20, MaxWindow: 256 << 20}, slog.Default())
	t.Cleanup(m.Close)
	admin := make(chan error, 1)
	go func() {
		admin <- m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, Path: "f", Ino: ino, Offset: 0, Length: -1, Priority: dmapi.PriorityAdmin})
	}()
	time.Sleep(50 * time.Millisecond) // the admin's stream has begun
	start := time.Now()
	if err := m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, Path: "f", Ino: ino, Offset: size - 4096, Length: 4096}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the reader on the admin's stream waited %v", d)
	}
	if err := <-admin; err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(root, "f"))
	if !bytes.Equal(got, data) {
		t.Fatal("wrong bytes")
	}
}

// A reader that found a hole just before another reader's stream wrote it
// and ended does not fetch it again: each byte is fetched once.
func TestReaderLateToAnEndedStreamFetchesNothing(t *testing.T) {
	size := int64(3<<20 + 5)
	root, arch, data, ino := migrated(t, size)
	m := newManager(t, root, arch)
	looked, goOn := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	recall.SetAfterLook(m, func() {
		if first.CompareAndSwap(false, true) { // the first look only: reader B's
			close(looked)
			<-goOn
		}
	})
	ev := func() *dmapi.Event {
		return &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: 256 << 10}
	}
	late := make(chan error, 1)
	go func() { late <- m.Handle(context.Background(), ev()) }()
	<-looked // B saw the first chunk missing
	if err := m.Handle(context.Background(), ev()); err != nil {
		t.Fatalf("reader A: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); recall.LiveStreams(m, ino) > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("reader A's stream did not end")
		}
	}
	close(goOn)
	if err := <-late; err != nil {
		t.Fatalf("reader B: %v", err)
	}
	m.Close()
	got, _ := os.ReadFile(filepath.Join(root, "f"))
	if !bytes.Equal(got[:256<<10], data[:256<<10]) {
		t.Fatal("recalled bytes differ")
	}
	if arch.gets != 1 {
		t.Fatalf("%d data GETs for a chunk that two readers wanted: B fetched again what A's stream wrote", arch.gets)
	}
}
