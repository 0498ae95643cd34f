package recall

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// fileRecall is the recall state of one migrated file, shared by every
// event on it while any is in flight.
type fileRecall struct {
	m    *Manager
	ino  uint64
	path string
	file *os.File
	fd   int
	st   unix.Stat_t // times to restore after invisible writes
	refs int         // guarded by m.mu

	mu      sync.Mutex
	cond    *sync.Cond
	rec     *stub.Record // nil once the file was made resident
	sums    []uint32
	streams []*stream
	lastEnd int64 // end of the last stream: a new one starting here is sequential
	window  int64
}

// stream is one ranged GET that writes verified chunks as they arrive, so
// readers inside its range are served as it advances.
type stream struct {
	start, end int64
	next       int64 // bytes below next are written
	done       bool
	err        error
}

// ensure returns once [off, end) holds data, starting or joining streams.
func (f *fileRecall) ensure(ctx context.Context, off, end int64) error {
	for {
		hole, err := stub.FirstHole(f.fd, off, end)
		if err != nil {
			return err
		}
		if hole >= end {
			return nil
		}
		f.mu.Lock()
		s := f.covering(hole)
		if s == nil {
			f.mu.Unlock()
			if err := f.m.takeStream(ctx); err != nil {
				return err
			}
			f.mu.Lock()
			if s = f.covering(hole); s != nil {
				f.m.putStream()
			} else if s, err = f.startLocked(ctx, hole, end); err != nil {
				f.m.putStream()
				f.mu.Unlock()
				return err
			}
		}
		for !s.done && s.next <= hole {
			f.cond.Wait()
		}
		if s.next <= hole && s.err != nil {
			err := s.err
			f.mu.Unlock()
			return err
		}
		f.mu.Unlock()
	}
}

// covering returns the live stream that will write offset off.
func (f *fileRecall) covering(off int64) *stream {
	for _, s := range f.streams {
		if s.start <= off && off < s.end && (!s.done || s.next > off) {
			return s
		}
	}
	return nil
}

// startLocked starts a stream at the chunk holding hole. The caller holds f.mu
// and a stream token, which the stream gives back when it ends.
func (f *fileRecall) startLocked(ctx context.Context, hole, want int64) (*stream, error) {
	if f.rec == nil {
		return nil, fmt.Errorf("%s: recall after the file became resident", f.path)
	}
	if err := f.loadSumsLocked(ctx); err != nil {
		return nil, err
	}
	chunk, size := f.rec.ChunkSize, f.rec.Size
	start := hole / chunk * chunk
	window := f.m.cfg.Window
	if start == f.lastEnd && f.window > 0 { // a sequential reader: read further ahead
		window = min(2*f.window, f.m.cfg.MaxWindow)
	}
	if size <= f.m.cfg.SmallFile {
		window = size
	}
	end := min(size, max(start+window, (want+chunk-1)/chunk*chunk))
	// Do not fetch again what is already here (stop at the next data, rounded up to a chunk).
	if next, err := stub.NextData(f.fd, hole, end); err == nil && next < end {
		end = min(end, max((next+chunk-1)/chunk*chunk, start+chunk))
	}
	s := &stream{start: start, end: end, next: start}
	f.streams = append(f.streams, s)
	f.lastEnd, f.window = end, window
	f.m.mu.Lock()
	f.refs++ // the stream keeps the file open
	f.m.mu.Unlock()
	f.m.wg.Add(1)
	go f.run(s)
	return s, nil
}

func (f *fileRecall) loadSumsLocked(ctx context.Context) error {
	if f.sums != nil || f.rec.SumsCount == 0 {
		return nil
	}
	if f.rec.Sums != nil {
		f.sums = f.rec.Sums
		return nil
	}
	blob := make([]byte, 4*int(f.rec.SumsCount))
	if err := f.m.withRetry(ctx, func() error {
		return archive.ReadFull(ctx, f.m.arch, f.rec.Key+stub.SumsSuffix, 0, blob)
	}); err != nil {
		return fmt.Errorf("checksums of %s: %w", f.rec.Key, err)
	}
	sums, err := stub.DecodeSums(f.rec, blob)
	if err != nil {
		return err
	}
	f.sums = sums
	return nil
}

// run fetches [s.start, s.end) with one GET (reopened from where it broke
// on a transient error), verifies and writes each chunk.
func (f *fileRecall) run(s *stream) {
	defer f.m.wg.Done()
	defer f.m.putStream()
	defer f.m.releaseFile(f)
	err := f.fetch(f.m.ctx, s)
	if err == nil {
		err = f.commitIfComplete()
	}
	f.mu.Lock()
	s.done, s.err = true, err
	for i, x := range f.streams {
		if x == s {
			f.streams = append(f.streams[:i], f.streams[i+1:]...)
			break
		}
	}
	f.cond.Broadcast()
	f.mu.Unlock()
	if err != nil {
		f.m.log.Error("recall stream failed", "file", f.path, "offset", s.next, "reason", err)
	}
}

func (f *fileRecall) fetch(ctx context.Context, s *stream) error {
	chunk := f.rec.ChunkSize
	buf := make([]byte, chunk)
	var body io.ReadCloser
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	failures := 0
	for off := s.start; off < s.end; {
		n := min(chunk, s.end-off)
		if body == nil {
			var err error
			body, err = f.m.arch.Get(ctx, f.rec.Key, off, s.end-off)
			if err != nil {
				if failures++; failures > f.m.cfg.Retries || !retryable(err) {
					return err
				}
				f.m.backoff(ctx, failures)
				continue
			}
		}
		_, err := io.ReadFull(body, buf[:n])
		if err == nil && stub.ChunkCRC(buf[:n]) != f.sums[off/chunk] {
			err = fmt.Errorf("%s chunk at %d: %w", f.rec.Key, off, ErrIntegrity)
		}
		if err != nil {
			body.Close()
			body = nil
			if failures++; failures > f.m.cfg.Retries || !retryable(err) || ctx.Err() != nil {
				return err
			}
			f.m.backoff(ctx, failures)
			continue
		}
		if err := f.write(buf[:n], off); err != nil {
			return err
		}
		off += n
		f.mu.Lock()
		s.next = off
		f.cond.Broadcast()
		f.mu.Unlock()
	}
	return nil
}

// write is invisible I/O: it writes verified bytes into a hole and puts the
// file's times back.
func (f *fileRecall) write(b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(f.fd, b, off)
		if err != nil {
			return fmt.Errorf("write backing file: %w", err)
		}
		b, off = b[n:], off+int64(n)
	}
	return stub.RestoreTimes(f.fd, &f.st)
}

// commitIfComplete records a fully recalled file as premigrated: its data
// is local again and the archive copy is still valid.
func (f *fileRecall) commitIfComplete() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rec == nil || f.rec.State != stub.Migrated {
		return nil
	}
	if hole, err := stub.FirstHole(f.fd, 0, f.rec.Size); err != nil || hole < f.rec.Size {
		return err
	}
	rec := *f.rec
	rec.State = stub.Premigrated
	if err := stub.WriteRecord(f.fd, &rec); err != nil {
		return err
	}
	f.rec = &rec
	return nil
}

// makeResident drops the record of a fully recalled file before it is
// changed: the archive copy becomes stale. It waits for streams still
// writing, so that none writes old bytes after the user's new ones.
func (f *fileRecall) makeResident() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.streams) > 0 {
		f.cond.Wait()
	}
	if f.rec == nil {
		return nil
	}
	if err := stub.RemoveRecord(f.fd); err != nil {
		return err
	}
	old := f.rec
	f.rec = nil
	if f.m.OnStale != nil {
		f.m.OnStale(old)
	}
	return nil
}

func (m *Manager) takeStream(ctx context.Context) error {
	select {
	case m.streams <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) putStream() { <-m.streams }

func (m *Manager) withRetry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 0; attempt <= m.cfg.Retries; attempt++ {
		if err = fn(); err == nil || !retryable(err) {
			return err
		}
		m.backoff(ctx, attempt+1)
	}
	return err
}

func (m *Manager) backoff(ctx context.Context, attempt int) {
	d := time.Duration(50<<min(attempt, 6)) * time.Millisecond
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// retryable: a missing object or a checksum that keeps failing is final
// after the retries; a missing object is final at once.
func retryable(err error) bool {
	return !isNotFound(err) && !isCanceled(err)
}
