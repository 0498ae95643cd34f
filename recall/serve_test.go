package recall_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/recall"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// serveRead raises a READ for [off, off+n) that offers a buffer, as a
// reader on the owner's node does, and returns its bytes: those served,
// else (as the mount does) those the backing file holds once answered.
func serveRead(ctx context.Context, m *recall.Manager, root string, ino uint64, off, n int64) ([]byte, error) {
	buf := make([]byte, n)
	answer, release, err := offerRead(ctx, m, ino, off, buf)
	if release != nil {
		defer release()
	}
	if err != nil {
		return nil, err
	}
	if len(answer) > 0 {
		return bytes.Join(answer, nil), nil
	}
	f, err := os.Open(filepath.Join(root, "f"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	k, _ := f.ReadAt(buf, off)
	return buf[:k], nil
}

// offerRead raises a READ of f for buf's length at off that offers buf,
// and returns the answer and its release (nil: nothing lent).
func offerRead(ctx context.Context, m *recall.Manager, ino uint64, off int64, buf []byte) ([][]byte, func(), error) {
	sv := dmapi.NewServe(off, buf)
	err := m.Handle(ctx, &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: off, Length: int64(len(buf)), Serve: sv, Token: dmapi.NewToken()})
	answer, release := sv.Close()
	return answer, release, err
}

// A reader is served from the checked chunk in memory while the write of
// that chunk to the backing file has not happened (here: cannot happen,
// the writer is held). The file shows no byte of it meanwhile; once the
// writer goes on, the file is recalled whole.
func TestServedBeforeWritten(t *testing.T) {
	const size = 8 << 20
	root, arch, data, ino := migrated(t, size)
	m := newManager(t, root, arch)
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	defer release()
	m.Acting = func() error { <-hold; return nil } // checked under the right, before each write
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := serveRead(ctx, m, root, ino, 300<<10, 1<<20)
	if err != nil || !bytes.Equal(got, data[300<<10:300<<10+1<<20]) {
		t.Fatalf("served %d bytes (err %v), not the data", len(got), err)
	}
	f, err := os.Open(filepath.Join(root, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if next, err := stub.NextData(int(f.Fd()), 0, size); err != nil || next < size {
		t.Fatalf("the file holds data at %d (err %v) while every write is held", next, err)
	}
	release()
	if err := m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: -1}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	all, _ := os.ReadFile(filepath.Join(root, "f"))
	if !bytes.Equal(all, data) {
		t.Fatal("the file differs after the writes went on")
	}
}

// A chunk whose bytes fail their check is never served: the reader of it
// gets the error, readers before it their bytes.
func TestServeShowsNoUncheckedByte(t *testing.T) {
	const size = 4 << 20
	root, arch, data, ino := migrated(t, size)
	arch.flipAt = 1<<20 + 77
	m := newManager(t, root, arch)
	got, err := serveRead(context.Background(), m, root, ino, 0, 1<<20)
	if err != nil || !bytes.Equal(got, data[:1<<20]) {
		t.Fatalf("first MiB: %d bytes, %v", len(got), err)
	}
	got, err = serveRead(context.Background(), m, root, ino, 1<<20, 512<<10)
	if !errors.Is(err, recall.ErrIntegrity) {
		t.Fatalf("the corrupt chunk: served %d bytes, err %v; want none and ErrIntegrity", len(got), err)
	}
}

// Many readers at once, of overlapping and partial ranges (across
// chunks, to the end of a file whose size is no multiple of a chunk),
// some cancelled while they wait: every served byte is right, and a
// cancelled reader's buffer is never written after it has gone.
func TestConcurrentServedReaders(t *testing.T) {
	const size = 6<<20 + 12345
	root, arch, data, ino := migrated(t, size)
	arch.slow = time.Millisecond // streams overlap the readers
	m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{},
		recall.Config{SmallFile: 256 << 10, Window: 1 << 20, MaxWindow: 2 << 20}, slog.Default())
	t.Cleanup(m.Close)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 7))
			off := r.Int64N(size)
			n := 1 + r.Int64N(1<<20)
			if i%8 == 0 {
				off = size - 1000 // to the end and past it
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			buf := make([]byte, n)
			for j := range buf {
				buf[j] = 0xA5
			}
			if i%5 == 0 {
				time.AfterFunc(time.Duration(r.IntN(20))*time.Millisecond, cancel)
			}
			answer, release, err := offerRead(ctx, m, ino, off, buf)
			served := bytes.Join(answer, nil)
			want := data[off:min(off+n, size)]
			switch {
			case err != nil && ctx.Err() == nil:
				errs <- err
			case len(served) > 0 && !bytes.Equal(served, want):
				errs <- errors.New("served bytes differ")
			case len(served) > 0 && len(served) != len(want):
				errs <- errors.New("served a short read")
			case err == nil && len(served) == 0:
				// Not served from memory: the bytes must be in the file.
				f, _ := os.Open(filepath.Join(root, "f"))
				got := make([]byte, len(want))
				f.ReadAt(got, off)
				f.Close()
				if !bytes.Equal(got, want) {
					errs <- errors.New("answered, but the file lacks the bytes")
				}
			}
			if release != nil {
				// Lent memory stays as it was until given back, while
				// the streams go on around it.
				time.Sleep(time.Duration(r.IntN(10)) * time.Millisecond)
				if !bytes.Equal(bytes.Join(answer, nil), want) {
					errs <- errors.New("lent bytes changed before they were given back")
				}
				release()
			}
			if len(served) == 0 {
				// Gone: whatever runs on must leave its buffer alone.
				snapshot := bytes.Clone(buf)
				time.Sleep(20 * time.Millisecond)
				if !bytes.Equal(snapshot, buf) {
					errs <- errors.New("a reader's buffer was written after it left")
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m.Close()
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "f"), &st); err != nil || st.Size != size {
		t.Fatalf("size %d, %v", st.Size, err)
	}
}

// An admin's cancel ends the streams that readers wait on: they get an
// error or their bytes, never wrong ones, and a later reader is served.
func TestCancelWhileServing(t *testing.T) {
	const size = 8 << 20
	root, arch, data, ino := migrated(t, size)
	arch.slow = 2 * time.Millisecond
	m := newManager(t, root, arch)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(i) << 20
			got, err := serveRead(context.Background(), m, root, ino, off, 1<<20)
			if err == nil && got != nil && !bytes.Equal(got, data[off:off+1<<20]) {
				t.Errorf("reader %d: wrong bytes", i)
			}
		}()
	}
	time.Sleep(30 * time.Millisecond)
	m.Cancel(ino)
	wg.Wait()
	arch.slow = 0
	got, err := serveRead(context.Background(), m, root, ino, 5<<20, 1<<20)
	if err != nil || !bytes.Equal(got, data[5<<20:6<<20]) {
		t.Fatalf("after the cancel: %d bytes, %v", len(got), err)
	}
}

// countingArchive counts the data GETs open at once.
type countingArchive struct {
	*faulty
	mu         sync.Mutex
	open, most int
	longest    int64 // the longest data GET
}

func (c *countingArchive) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	body, err := c.faulty.Get(ctx, key, off, length)
	if _, part := archive.DataKeyOf(key); err != nil || part != archive.Data {
		return body, err
	}
	c.mu.Lock()
	c.open++
	c.most = max(c.most, c.open)
	c.longest = max(c.longest, length)
	c.mu.Unlock()
	return &countedBody{ReadCloser: body, c: c}, nil
}

type countedBody struct {
	io.ReadCloser
	c    *countingArchive
	once sync.Once
}

func (b *countedBody) Close() error {
	b.once.Do(func() { b.c.mu.Lock(); b.c.open--; b.c.mu.Unlock() })
	return b.ReadCloser.Close()
}

// A sequential reader that one GET cannot keep up with (each read of the
// body waits) gets parallel ranged GETs ahead of it, no more than the
// bound per file, and every byte right.
func TestParallelGETsForAFastReader(t *testing.T) {
	const size = 96 << 20
	root, arch, data, ino := migrated(t, size)
	arch.slow = 8 * time.Millisecond // 32 MB/s per GET: well below slowGET
	counted := &countingArchive{faulty: arch}
	m := recall.NewManager(fakes.Root(t, root), counted, &dmapi.Rights{}, fakes.KeptGarbage{},
		recall.Config{SmallFile: 1 << 20, Window: 1 << 20, MaxWindow: 64 << 20}, slog.Default())
	t.Cleanup(m.Close)
	for off := int64(0); off < size; off += 1 << 20 {
		got, err := serveRead(context.Background(), m, root, ino, off, 1<<20)
		if err != nil || !bytes.Equal(got, data[off:off+1<<20]) {
			t.Fatalf("at %d: %d bytes, %v", off, len(got), err)
		}
	}
	m.Close()
	all, _ := os.ReadFile(filepath.Join(root, "f"))
	if !bytes.Equal(all, data) {
		t.Fatal("the file differs")
	}
	if counted.most < 3 || counted.most > recall.MaxParallel {
		t.Fatalf("at most %d GETs at once; want 3 to %d", counted.most, recall.MaxParallel)
	}
	// The splits did not make the reader's next streams start small
	// again: its windows kept doubling (1, 2, 4, ... MiB) to the largest.
	if counted.longest < 32<<20 {
		t.Fatalf("the longest GET took %d MiB; a sequential reader's window grows to 64 MiB", counted.longest>>20)
	}
	t.Logf("at most %d GETs at once, the longest of %d MiB", counted.most, counted.longest>>20)
}

// Replies never sent (their memory never given back) keep their bytes as
// they were, while the stream goes on past them and the recall ends
// (TestTakePieceWhenEveryBufferIsLent holds every buffer of a stream).
func TestLentNeverGivenBack(t *testing.T) {
	const size = 24 << 20
	root, arch, data, ino := migrated(t, size)
	arch.slow = 20 * time.Millisecond // a chunk each 20 ms: the reader is served from memory
	m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{},
		recall.Config{SmallFile: 1 << 20, Window: size, MaxWindow: size}, slog.Default())
	t.Cleanup(m.Close)
	read := func(off, n int64, wait time.Duration) ([][]byte, func(), error) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return offerRead(ctx, m, ino, off, make([]byte, n))
	}
	// The first 4 MiB: as many chunks as one stream has buffers, every
	// one lent to a reply that is never sent.
	held, release, err := read(0, 4<<20, 10*time.Second)
	if err != nil || len(held) != (4<<20)/(256<<10) || release == nil {
		t.Fatalf("the first read: %d slices lent (want one per chunk), %v", len(held), err)
	}
	// Further on in the same stream: it must get past them.
	if answer, release, err := read(5<<20, 1<<20, 5*time.Second); err != nil || !bytes.Equal(bytes.Join(answer, nil), data[5<<20:6<<20]) {
		t.Fatalf("a read past the lent buffers: %v", err)
	} else if release != nil {
		release()
	}
	if !bytes.Equal(bytes.Join(held, nil), data[:4<<20]) {
		t.Fatal("the answer lent changed")
	}
	if err := m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: -1}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	all, _ := os.ReadFile(filepath.Join(root, "f"))
	if !bytes.Equal(all, data) {
		t.Fatal("the file differs")
	}
}

// The commit of a whole file (its sync, its fence, its record) does not
// keep the file's readers waiting: here the fence holds it, as a slow
// repository or a long sync of a large file would, and a reader of the
// file is still served.
func TestReadersServedDuringTheCommit(t *testing.T) {
	const size = 4 << 20
	root, arch, data, ino := migrated(t, size)
	m := newManager(t, root, arch)
	inFence, hold := make(chan struct{}), make(chan struct{})
	var once sync.Once
	m.Fence = func(commit func() error) error {
		once.Do(func() { close(inFence) })
		<-hold
		return commit()
	}
	var held sync.Once
	release := func() { held.Do(func() { close(hold) }) }
	defer release()
	recalled := make(chan error, 1)
	go func() {
		recalled <- m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: -1})
	}()
	select {
	case <-inFence:
	case <-time.After(10 * time.Second):
		t.Fatal("the recall never came to its commit")
	}
	type read struct {
		got []byte
		err error
	}
	served := make(chan read, 1)
	go func() {
		got, err := serveRead(context.Background(), m, root, ino, 1<<20, 1<<20)
		served <- read{got, err}
	}()
	select {
	case r := <-served:
		if r.err != nil || !bytes.Equal(r.got, data[1<<20:2<<20]) {
			t.Fatalf("a reader during the commit: %d bytes, %v", len(r.got), r.err)
		}
	case <-time.After(3 * time.Second):
		release()
		t.Fatal("a reader waited for the commit")
	}
	release()
	if err := <-recalled; err != nil {
		t.Fatal(err)
	}
	m.Close()
	if st, _ := recordState(t, filepath.Join(root, "f")); st != stub.Premigrated {
		t.Fatalf("state %v after the commit, want premigrated", st)
	}
}

// A stream that gives its slot up to a waiting recall (nobody waits on
// it) still writes every chunk it has shown: a reader may have been
// served those from memory, and would never ask for them again. Before,
// the shown chunks past the last write were dropped, and the file, read
// whole, was never whole on disk.
func TestCutStreamWritesWhatItServed(t *testing.T) {
	const size = 16 << 20
	root, arch, data, ino := migrated(t, size)
	m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{},
		recall.Config{SmallFile: 1 << 20, Window: 8 << 20, MaxWindow: 8 << 20, MaxStreams: 1}, slog.Default())
	t.Cleanup(m.Close)
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	defer release()
	m.Acting = func() error { <-hold; return nil } // before each write, under the right
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The stream's 16 buffers (4 MiB, more than one write takes) are
	// served from memory while no write can happen; its window goes on
	// to 8 MiB.
	got, err := serveRead(ctx, m, root, ino, 0, 4<<20)
	if err != nil || !bytes.Equal(got, data[:4<<20]) {
		t.Fatalf("served %d bytes (err %v), not the data", len(got), err)
	}
	// A read elsewhere waits for the only slot.
	other := make(chan error, 1)
	go func() {
		_, err := serveRead(ctx, m, root, ino, 12<<20, 1<<20)
		other <- err
	}()
	for !recall.Contended(m) {
		if ctx.Err() != nil {
			t.Fatal("the second read never waited for a slot")
		}
		time.Sleep(time.Millisecond)
	}
	release()
	if err := <-other; err != nil {
		t.Fatal(err)
	}
	m.Close()
	f, err := os.Open(filepath.Join(root, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if hole, err := stub.FirstHole(int(f.Fd()), 0, 4<<20); err != nil || hole < 4<<20 {
		t.Fatalf("what was served from memory has a hole at %d (err %v): shown, served, never written", hole, err)
	}
	// And the stream did give its slot up: it stopped after what it had
	// shown, short of its window.
	if hole, err := stub.FirstHole(int(f.Fd()), 4<<20, 8<<20); err != nil || hole >= 8<<20 {
		t.Fatalf("the rest of the first window was fetched (first hole %d, err %v): the stream was not cut", hole, err)
	}
}
