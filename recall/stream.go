package recall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/seal"
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
	key  string      // the object the recall fetches
	refs int         // guarded by m.mu

	mu        sync.Mutex
	cond      *sync.Cond
	commitMu  sync.Mutex   // one commit at a time (commitIfComplete)
	rec       *stub.Record // nil once the file was made resident
	sums      []uint32
	sumsReady chan struct{} // closed when sums (or sumsErr) are loaded
	sumsErr   error
	streams   []*stream
	lastEnd   int64 // end of the last stream: a new one starting here is sequential
	window    int64
	fetched   int64 // bytes written by streams: equals the size when no byte was fetched twice
}

// stream is one ranged GET that writes verified chunks as they arrive, so
// readers inside its range are served as it advances.
type stream struct {
	start, end int64
	next       int64 // bytes below next are written
	done       bool
	err        error
	prefetched bool   // the stream after this one was started (or judged needless)
	bulk       bool   // started for bulk work: holds a bulk token too
	copy       int    // the archive copy it reads (the next after one that failed)
	uid        uint32 // the user it was started for: the recall rate is shared fairly between users
	waiting    int    // events waiting on it now (f.mu): one with none may end early
	// hurried: a reader waits on this (bulk) stream: it no longer holds
	// back for readers, one of which it would keep waiting.
	hurried atomic.Bool
	ctx     context.Context
	cancel  context.CancelFunc // stops its GET (an admin's cancel)
	pieces  []*piece           // its chunk buffers (f.mu), at most streamPieces
	// shown: the receiver has shown every chunk below it (f.mu).
	shown int64
	// starved: the receiver waits for a free buffer, not for the GET:
	// the disk (or the CPU) is what holds the stream back (f.mu).
	starved bool
	// getFrom, getAt: where and when its current GET began (f.mu), for
	// the rate one GET brings.
	getFrom int64
	getAt   time.Time
}

// ensure returns once [off, end) holds data, starting or joining streams,
// or when ctx ends. Bulk work (not a reader's) starts its streams within
// the bulk share of the stream slots. inMemory: checked bytes that are
// not yet written will do (a reader on this node is served from them).
func (f *fileRecall) ensure(ctx context.Context, off, end int64, bulk bool, uid uint32, inMemory bool) error {
	defer f.wakeWhenDone(ctx)()
	for {
		hole, err := f.firstAbsent(off, end, inMemory)
		if err != nil {
			return err
		}
		if hole >= end {
			return nil
		}
		if f.m.afterLook != nil {
			f.m.afterLook()
		}
		f.mu.Lock()
		s := f.covering(hole)
		if s == nil {
			f.mu.Unlock()
			if err := f.m.takeStream(ctx, bulk, uid); err != nil {
				return err
			}
			f.mu.Lock()
			if s = f.covering(hole); s != nil {
				f.m.putStream(bulk, uid)
			} else if err = ctx.Err(); err != nil {
				// Cancelled: a stream started now would escape the
				// Cancel that comes after (it takes f.mu).
				f.m.putStream(bulk, uid)
				f.mu.Unlock()
				return err
			} else if now, err := f.firstMissing(f.rec, hole, end); err != nil || now != hole {
				// A stream that wrote the hole meanwhile has ended and
				// left f.streams: its bytes are in the file (it writes
				// before it leaves, under f.mu), so look again rather
				// than fetch them twice.
				f.m.putStream(bulk, uid)
				f.mu.Unlock()
				if err != nil {
					return err
				}
				continue
			} else if s, err = f.startLocked(hole, end, bulk, uid); err != nil {
				f.m.putStream(bulk, uid)
				f.mu.Unlock()
				return err
			}
		}
		if !bulk && (s.bulk || uid != s.uid) {
			s.hurried.Store(true) // another's reader waits on it: no holding back
		}
		if hole >= s.start+(s.end-s.start)/2 {
			f.prefetchLocked(s)
		}
		if !bulk {
			if f.splitLocked(s, hole); hole >= s.end {
				f.mu.Unlock()
				continue // the hole went to the new stream
			}
		}
		here := func() bool { return s.next > hole || inMemory && f.pieceAt(hole) != nil }
		s.waiting++
		for !s.done && !here() && ctx.Err() == nil {
			f.cond.Wait()
		}
		s.waiting--
		if err := ctx.Err(); err != nil && !here() {
			f.mu.Unlock()
			return err // the stream goes on for the others
		}
		if !here() && s.err != nil {
			err := s.err
			f.mu.Unlock()
			return err
		}
		f.mu.Unlock()
	}
}

// wakeWhenDone wakes the waiters of f.cond when ctx ends, so that one
// waiting for ctx too sees it; the returned func stops that.
func (f *fileRecall) wakeWhenDone(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
}

// firstAbsent is the first offset of [off, end) that is not in the file
// (see firstMissing) nor, when inMemory, checked in a stream's memory.
// The memory is looked at first: a reader that keeps up with a stream
// finds its bytes there, and the look for holes in the file waits for
// the inode lock that the stream's disk write holds.
func (f *fileRecall) firstAbsent(off, end int64, inMemory bool) (int64, error) {
	missing := false // off is known not to be in the file
	for off < end {
		f.mu.Lock()
		rec := f.rec
		var p *piece
		if inMemory {
			if p = f.pieceAt(off); p != nil {
				off = p.off + int64(len(p.data))
			}
		}
		f.mu.Unlock()
		switch {
		case p != nil:
			missing = false
			continue
		case missing:
			return off, nil
		}
		hole, err := f.firstMissing(rec, off, end)
		if err != nil || hole >= end || !inMemory || hole == off {
			return hole, err
		}
		off, missing = hole, true // in memory, maybe
	}
	return end, nil
}

// firstMissing is the first offset of [off, end) that a recall must
// still write: the first hole of a stub (rec) that its record does not
// keep as a hole, or of a file made resident (rec nil).
func (f *fileRecall) firstMissing(rec *stub.Record, off, end int64) (int64, error) {
	if rec != nil {
		return stub.FirstMissing(f.fd, rec, off, end) // the file's own holes stay
	}
	return stub.FirstHole(f.fd, off, end)
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

// prefetchLocked starts the stream after s when a reader has caught up with
// the middle of s, so that a sequential reader never waits for a GET to
// open. It only uses a free stream slot: readers that wait come first.
func (f *fileRecall) prefetchLocked(s *stream) {
	if s.prefetched || f.rec == nil || s.end >= f.rec.Size {
		return
	}
	s.prefetched = true
	if f.covering(s.end) != nil {
		return
	}
	if hole, err := stub.FirstMissing(f.fd, f.rec, s.end, min(s.end+f.rec.ChunkSize, f.rec.Size)); err != nil || hole > s.end {
		return // already here (or unknown: the reader will ask)
	}
	if !f.m.tryStream(s.bulk, s.uid) {
		return
	}
	if _, err := f.startLocked(s.end, s.end, s.bulk, s.uid); err != nil {
		f.m.putStream(s.bulk, s.uid)
	}
}

// maxParallel bounds the streams of one file: parallel ranged GETs for
// a reader that one GET cannot keep up with.
const maxParallel = 4

// minSplit is the least a stream must have left to receive for a split:
// each half is at least this much.
const minSplit = 1 << 20

// slowGET is the rate below which one GET is what a waiting reader
// waits for. Above it (an object store on the same machine or the same
// rack) the CPU is the limit, and more GETs only take more of it: on a
// 2-core machine with MinIO a split halved a stub's full read.
const slowGET = 150e6 // bytes per second

// splitLocked gives the back half of what s has left to receive to a
// stream of its own when a reader waits at s's front and s waits for
// its GET, not for its disk write (starved) or the CPU: the reader then
// reads faster than one GET brings. Only with a free stream slot: the
// bound of GETs and of their buffers per node stays MaxStreams.
func (f *fileRecall) splitLocked(s *stream, hole int64) {
	if f.rec == nil {
		return
	}
	chunk := f.rec.ChunkSize
	front := max(s.shown, s.next)
	if s.done || s.starved || hole < front || len(f.streams) >= maxParallel || s.end-front < 2*minSplit {
		return
	}
	got := s.shown - s.getFrom
	if s.getAt.IsZero() || got < 2*minSplit || float64(got)/time.Since(s.getAt).Seconds() >= slowGET {
		return // too early to judge, or not the GET that holds the reader
	}
	mid := (front + (s.end-front)/2 + chunk - 1) / chunk * chunk
	if mid >= s.end || !f.m.tryStream(s.bulk, s.uid) {
		return
	}
	end, lastEnd, window := s.end, f.lastEnd, f.window
	s.end = mid // its receiver stops there
	_, err := f.startLocked(mid, end, s.bulk, s.uid)
	// A split is not the reader's next window: the next stream at the
	// front still reads twice as far as the last.
	f.lastEnd, f.window = lastEnd, window
	if err != nil {
		f.m.putStream(s.bulk, s.uid)
		s.end = end
		return
	}
	f.m.log.Debug("recall stream split", "file", f.path, "at", mid, "end", end)
}

// startLocked starts a stream at the chunk holding hole. The caller holds f.mu,
// the file's shared DM right and a stream token, which the stream gives back
// when it ends.
func (f *fileRecall) startLocked(hole, want int64, bulk bool, uid uint32) (*stream, error) {
	if f.rec == nil {
		return nil, fmt.Errorf("%s: recall after the file became resident", f.path)
	}
	f.loadSumsLocked()
	chunk, size := f.rec.ChunkSize, f.rec.Size
	start := hole / chunk * chunk
	window := f.m.cfg.Window
	if start == f.lastEnd && f.window > 0 { // a sequential reader: read further ahead
		window = min(2*f.window, f.m.cfg.MaxWindow)
	}
	if size <= f.m.cfg.SmallFile {
		window = size
	}
	end := min(size, max(start+window, want))
	end = min(size, (end+chunk-1)/chunk*chunk) // whole chunks: each is verified whole
	// One GET serves one run of data chunks: a hole run of the file is
	// not in the object.
	end = min(end, f.rec.DataEnd(start))
	// Do not fetch again what is already here (stop at the next data, rounded up to a chunk),
	// nor what a later stream will write (its chunks may be shown, not yet written).
	if next, err := stub.NextData(f.fd, hole, end); err == nil && next < end {
		end = min(end, max((next+chunk-1)/chunk*chunk, start+chunk))
	}
	for _, x := range f.streams {
		if x.start > start {
			end = min(end, x.start)
		}
	}
	f.m.log.Debug("recall stream", "file", f.path, "start", start, "end", end)
	s := &stream{start: start, end: end, next: start, shown: start, bulk: bulk, uid: uid}
	s.ctx, s.cancel = context.WithCancel(f.m.ctx)
	f.streams = append(f.streams, s)
	f.lastEnd, f.window = end, window
	f.m.mu.Lock()
	f.refs++ // the stream keeps the file open
	f.m.mu.Unlock()
	// The stream may outlive the event that started it: it holds its own
	// share of the DM right, so no migration punches under it.
	release := f.m.rights.Share(f.ino)
	f.m.wg.Add(1)
	go f.run(s, release)
	return s, nil
}

// loadSumsLocked makes the chunk checksums available: at once when the
// record holds them, else fetched from the archive beside the first data GET
// (so a first read waits for one round trip, not two). A failed load is
// tried again by the next stream.
func (f *fileRecall) loadSumsLocked() {
	if f.sumsReady != nil {
		select {
		case <-f.sumsReady:
			if f.sumsErr == nil {
				return
			}
		default:
			return // loading
		}
	}
	ready := make(chan struct{})
	f.sumsReady, f.sumsErr = ready, nil
	if f.sums != nil || f.rec.InlineSums() {
		if f.sums == nil {
			f.sums = f.rec.Sums
		}
		close(ready)
		return
	}
	rec := f.rec
	f.m.wg.Add(1)
	go func() {
		defer f.m.wg.Done()
		ctx := f.m.ctx
		var sums []uint32
		err := f.m.withRetry(ctx, func() (err error) {
			sums, err = archive.ReadSums(ctx, f.m.arch, rec)
			return err
		})
		f.mu.Lock()
		f.sums, f.sumsErr = sums, err
		close(ready)
		f.mu.Unlock()
	}()
}

// waitSums returns the chunk checksums once loaded.
func (f *fileRecall) waitSums(ctx context.Context) ([]uint32, error) {
	f.mu.Lock()
	ready := f.sumsReady
	f.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sums, f.sumsErr
}

// run fetches [s.start, s.end) with one GET (reopened from where it broke
// on a transient error), verifies and writes each chunk.
func (f *fileRecall) run(s *stream, releaseRight func()) {
	defer f.m.wg.Done()
	defer f.m.putStream(s.bulk, s.uid)
	defer f.m.releaseFile(f)
	defer releaseRight()
	defer s.cancel()
	err := f.fetch(s.ctx, s)
	if err == nil {
		f.m.repairBehind(f, s.copy)
		err = f.commitIfComplete()
	} else {
		f.m.forgetBadCopies(f)
	}
	f.mu.Lock()
	s.done, s.err = true, err
	for i, x := range f.streams {
		if x == s {
			f.streams = append(f.streams[:i], f.streams[i+1:]...)
			break
		}
	}
	// Out of f.streams, no reader finds its buffers any more: those no
	// reply holds go to the next streams.
	for _, p := range s.pieces {
		if p.readers == 0 {
			f.m.chunkBufs.Put(&p.buf)
		}
	}
	s.pieces = nil
	f.cond.Broadcast()
	f.mu.Unlock()
	switch {
	case err != nil && s.ctx.Err() != nil && f.m.ctx.Err() == nil:
		f.m.log.Info("recall stream cancelled", "file", f.path, "offset", s.next)
	case err != nil:
		f.m.log.Error("recall stream failed", "file", f.path, "offset", s.next, "reason", err)
	}
}

func (f *fileRecall) fetch(ctx context.Context, s *stream) error {
	failures := 0
	for off := s.start; off < f.endOf(s); {
		next, err, final := f.fetchFrom(ctx, s, off)
		if err == nil {
			break
		}
		if next > off {
			failures = 0 // it moved on: count the failures of this spot only
		}
		off = next
		failures++
		// A copy that has wrong bytes, lacks the object or keeps failing:
		// the next copy serves from here, and this one is repaired.
		spent := errors.Is(err, ErrIntegrity) || !retryable(err) || failures > f.m.cfg.Retries
		if spent && !final && ctx.Err() == nil && f.nextCopy(s, off, err) {
			failures = 0
			continue
		}
		if final || failures > f.m.cfg.Retries || !retryable(err) || ctx.Err() != nil {
			return err
		}
		f.m.backoff(ctx, failures)
	}
	return nil
}

// streamPieces is how many chunk buffers one stream owns: the receiver
// runs up to this many chunks ahead of the disk write, and a reader on
// this node is served from those still held. Memory: this many chunks
// (4 MiB at the default 256 KiB) per stream, MaxStreams streams per
// filesystem (and one more for a user who has none), and besides the
// buffers a stream let go of while readers' replies still held them,
// freed once those are sent (at most one per chunk of a read in flight).
const streamPieces = 16

// piece is one chunk buffer of a stream. The receiver fills it, checks
// (and opens) it and shows it to readers; the writer writes it to the
// backing file; it keeps its bytes for readers until the receiver takes
// it for a later chunk.
type piece struct {
	buf     []byte // the whole buffer: a chunk as stored
	data    []byte // the checked, opened bytes of the chunk at off; nil: none (f.mu)
	off     int64
	written bool // data is in the backing file too (f.mu)
	readers int  // readers' replies out from buf (f.mu): it is not reused in place
}

// received is one chunk as the receiver passes it to the writer.
type received struct {
	p   *piece
	off int64
	err error
}

// pieceAt returns the piece holding verified bytes at off, from any
// stream of the file; f.mu is held.
func (f *fileRecall) pieceAt(off int64) *piece {
	for _, s := range f.streams {
		for _, p := range s.pieces {
			if p.data != nil && p.off <= off && off < p.off+int64(len(p.data)) {
				return p
			}
		}
	}
	return nil
}

// takePiece gives the receiver a buffer for its next chunk: an unused
// one, else a new one up to the stream's bound (so that readers find the
// last chunks in memory), else the lowest written one no reply holds,
// else one that replies hold (see letGoOfLent). It waits for the writer
// when every buffer holds an unwritten chunk, or until ctx ends.
func (f *fileRecall) takePiece(ctx context.Context, s *stream, size int) (*piece, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() { s.starved = false }()
	for {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		var best *piece
		for _, p := range s.pieces {
			if p.data == nil && p.readers == 0 {
				best = p
				break
			}
			if p.written && p.readers == 0 && (best == nil || p.off < best.off) {
				best = p
			}
		}
		if (best == nil || best.data != nil) && len(s.pieces) < streamPieces {
			best = &piece{buf: f.m.chunkBuf(size)}
			s.pieces = append(s.pieces, best)
		}
		if best == nil {
			best = s.letGoOfLent(size)
		}
		if best != nil {
			best.data, best.written = nil, false // no longer shown to readers
			return best, s.end, nil
		}
		s.starved = true
		f.cond.Wait()
	}
}

// letGoOfLent replaces the lowest buffer that is lent to readers' replies
// and needs no write with a new one, and returns the new one (nil when
// there is none such): the stream does not wait for a reply to be sent
// (one the kernel never takes would hold it for good); the garbage
// collector frees the old buffer once its replies are sent. f.mu is held.
func (s *stream) letGoOfLent(size int) *piece {
	i := -1
	for j, p := range s.pieces {
		if p.readers > 0 && (p.data == nil || p.written) && (i < 0 || p.off < s.pieces[i].off) {
			i = j
		}
	}
	if i < 0 {
		return nil
	}
	s.pieces[i] = &piece{buf: make([]byte, size)}
	return s.pieces[i]
}

// chunkBuf is a buffer of size bytes: one an ended stream left, or new.
func (m *Manager) chunkBuf(size int) []byte {
	if b, ok := m.chunkBufs.Get().(*[]byte); ok && cap(*b) >= size {
		return (*b)[:size]
	}
	return make([]byte, size)
}

// givePiece returns a buffer the receiver took and did not fill.
func (f *fileRecall) givePiece(p *piece) {
	f.mu.Lock()
	p.data = nil
	f.cond.Broadcast()
	f.mu.Unlock()
}

// endOf is where s ends now.
func (f *fileRecall) endOf(s *stream) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return s.end
}

// fetchFrom runs one GET of [off, s.end): a receiver goroutine reads,
// checks and shows each chunk to the readers waiting on it, while this
// one writes them to the backing file behind it. It returns how far it
// wrote and, on failure, whether the error is final (a local write
// failed, or the key of a sealed object is not here: no other copy helps).
func (f *fileRecall) fetchFrom(ctx context.Context, s *stream, off int64) (int64, error, bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rec := f.rec
	var sealed *seal.Object
	if rec.Sealed {
		// No copy holds another key's chunks: a key missing here is final.
		key, err := f.m.Keys.Find(rec.KeyID)
		if err != nil {
			return off, fmt.Errorf("%s: %w", f.path, err), true
		}
		if sealed, err = key.Object(rec.Salt, rec.Key); err != nil {
			return off, err, true
		}
	}
	end := f.endOf(s) // the writer may cut it short, and a split may
	body, err := f.m.getData(ctx, rec, s.copy, rec.Packed(off), rec.Packed(end)-rec.Packed(off))
	if errors.Is(err, archive.ErrChanged) {
		return off, fmt.Errorf("%s: %w", f.path, err), true // no copy, and no retry, helps
	}
	if err != nil {
		return off, err, false
	}
	f.mu.Lock()
	s.getAt = time.Time{} // set at its first chunk: the rate leaves the wait for the first byte out
	f.mu.Unlock()
	chunk := rec.ChunkSize
	filled := make(chan received, streamPieces)
	// The receiver checks (and opens) each chunk as it comes, beside the
	// writer's disk write of the chunk before: the CPU work of a stream
	// runs on two cores.
	var sums []uint32
	check := func(b []byte, o int64) ([]byte, error) {
		if rec.Unverified {
			return b, nil // an imported object, bound by its ETag only
		}
		if sums == nil && sealed == nil {
			var err error
			if sums, err = f.waitSums(ctx); err != nil {
				return nil, err
			}
		}
		i := o / chunk
		if sealed == nil {
			if i >= int64(len(sums)) || stub.ChunkCRC(b) != sums[i] {
				return nil, fmt.Errorf("%s chunk at %d: %w", rec.Key, o, ErrIntegrity)
			}
			return b, nil
		}
		// A sealed chunk's tag checks it (the checksum of the sealed
		// bytes is for scrub and repair, which have no key).
		data, err := sealed.Open(b[:0], b, uint32(i))
		if err != nil {
			return nil, fmt.Errorf("%s chunk at %d: %w: %w", rec.Key, o, err, ErrIntegrity)
		}
		return data, nil
	}
	defer f.wakeWhenDone(ctx)() // a receiver waiting for a buffer
	go func() {
		defer close(filled)
		for o := off; o < end; {
			p, now, err := f.takePiece(ctx, s, int(rec.StoredLen(chunk)))
			if err != nil {
				return
			}
			if end = min(end, now); o >= end {
				f.givePiece(p) // split off: another stream receives the rest
				return
			}
			n := min(chunk, end-o)
			b := p.buf[:rec.StoredLen(n)]
			f.m.holdBack(ctx, s) // the archive and the link
			_, err = io.ReadFull(body, b)
			if err == nil && f.m.Throttle != nil {
				err = f.m.Throttle.WaitFor(ctx, s.uid, len(b)) // the GET waits in the socket meanwhile
			}
			if err == nil {
				b, err = check(b, o)
			}
			if err == nil {
				// Checked: readers waiting on it are served now, the
				// disk write comes behind.
				f.mu.Lock()
				if o >= s.end {
					// Cut meanwhile (writeBatch): not shown, so
					// that nobody is served bytes this stream
					// does not write.
					p.data = nil
					f.cond.Broadcast()
					f.mu.Unlock()
					return
				}
				p.data, p.off = b, o
				s.shown = o + n
				if s.getAt.IsZero() {
					s.getFrom, s.getAt = s.shown, time.Now()
				}
				f.cond.Broadcast()
				f.mu.Unlock()
			}
			filled <- received{p, o, err}
			if err != nil {
				return
			}
			o += n
		}
	}()
	defer func() {
		cancel() // aborts the GET, so the receiver stops
		for range filled {
		}
		body.Close()
		// What was checked and not written goes with this GET: while
		// shown, a reader would wait on bytes nobody writes.
		f.mu.Lock()
		for _, p := range s.pieces {
			if p.data != nil && !p.written {
				p.data = nil
			}
		}
		f.cond.Broadcast()
		f.mu.Unlock()
	}()
	batch := make([]received, 0, maxBatch)
	linger := time.NewTimer(0)
	defer linger.Stop()
	for r := range filled {
		// The next chunks go into the same write: one right, one record
		// look and one time restore for the lot. Readers here are served
		// from memory meanwhile; the wait for more is short, so that a
		// slow GET's chunks still reach the disk soon.
		batch = append(batch[:0], r)
		linger.Reset(batchLinger)
	more:
		for len(batch) < maxBatch && batch[len(batch)-1].err == nil {
			select {
			case r, ok := <-filled:
				if !ok {
					break more
				}
				batch = append(batch, r)
			case <-linger.C:
				break more
			}
		}
		var failed *received
		if last := batch[len(batch)-1]; last.err != nil {
			failed, batch = &last, batch[:len(batch)-1]
		}
		if len(batch) > 0 {
			if err, final := f.writeBatch(ctx, s, batch); err != nil {
				return batch[0].off, err, final
			}
		}
		if failed != nil {
			return failed.off, failed.err, false
		}
	}
	return f.endOf(s), nil, false
}

// maxBatch is how many checked chunks one write takes at most: half the
// stream's buffers, so that the receiver fills the other half meanwhile.
const maxBatch = streamPieces / 2

// batchLinger is how long the writer waits for the next checked chunk of
// its batch before it writes what it has.
const batchLinger = 2 * time.Millisecond

// writeBatch writes consecutive checked chunks to the backing file; on
// an error it says whether the error is final (a local write failed).
func (f *fileRecall) writeBatch(ctx context.Context, s *stream, batch []received) (err error, final bool) {
	off := batch[0].off
	f.m.holdBack(ctx, s) // the disk and the CPU
	if err := ctx.Err(); err != nil {
		return err, false // cancelled: not a byte more
	}
	bufs := make([][]byte, len(batch))
	f.mu.Lock()
	for i, r := range batch {
		bufs[i] = r.p.data // checked, and opened; stays while unwritten
	}
	f.mu.Unlock()
	if err := f.write(ctx, bufs, off); err != nil {
		return err, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range batch {
		r.p.written = true
		s.next = r.off + int64(len(bufs[i]))
		f.fetched += int64(len(bufs[i]))
		f.m.count(0, int64(len(bufs[i])))
	}
	f.cond.Broadcast()
	// Reading ahead with nobody waiting on it, while a recall waits
	// for a GET stream: the stream ends after what it has shown, and
	// gives its slot up (a reader that comes for the rest starts
	// another). What it has shown is still written: a reader may have
	// been served it from memory, and would not ask for it again.
	if s.waiting == 0 && s.shown < s.end && f.m.streams.contended() {
		if f.lastEnd == s.end {
			f.lastEnd = s.shown // the reader's stream from here is still sequential
		}
		f.m.log.Debug("recall stream cut", "file", f.path, "at", s.shown, "end", s.end)
		s.end = s.shown // the receiver stops, the writer writes what came
	}
	return nil, false
}

// serveInto answers a reader of dest's length at off (cut at the
// file's size): with checked chunks still in memory, lent as they are
// until release, else with the backing file's bytes, read into dest,
// where it holds them. The answer is nothing when some of the bytes are
// in neither place (the reader then reads as before).
func (f *fileRecall) serveInto(off int64, dest []byte) (answer [][]byte, release func()) {
	f.mu.Lock()
	rec := f.rec
	f.mu.Unlock()
	if rec == nil || off < 0 || off >= rec.Size {
		return nil, nil // resident now, or nothing to serve: the reader reads the file
	}
	end := off + min(int64(len(dest)), rec.Size-off)
	var lent []*piece
	giveBack := func() {
		f.mu.Lock()
		for _, p := range lent {
			p.readers--
		}
		f.cond.Broadcast() // a receiver may wait for one of them
		f.mu.Unlock()
	}
	for o := off; o < end; {
		f.mu.Lock()
		if p := f.pieceAt(o); p != nil {
			p.readers++ // not reused in place while the reply is out
			lent = append(lent, p)
			data := p.data[o-p.off : min(int64(len(p.data)), end-p.off)]
			f.mu.Unlock()
			answer = append(answer, data)
			o += int64(len(data))
			continue
		}
		f.mu.Unlock()
		// Written and its buffer reused: the file has it, unless a
		// release punched it meanwhile (looked at after the read).
		part := dest[o-off : min(end, (o/rec.ChunkSize+1)*rec.ChunkSize)-off]
		n, err := unix.Pread(f.fd, part, o)
		if err == nil && n == len(part) {
			var hole int64
			if hole, err = stub.FirstMissing(f.fd, rec, o, o+int64(n)); err == nil && hole < o+int64(n) {
				err = errPunchedMeanwhile
			}
		}
		if err != nil || n < len(part) {
			giveBack()
			return nil, nil
		}
		answer = append(answer, part)
		o += int64(n)
	}
	if len(lent) == 0 {
		return answer, nil
	}
	var once sync.Once
	return answer, func() { once.Do(giveBack) }
}

// errPunchedMeanwhile: a file found whole was punched before it was made
// resident (by a release that held the right meanwhile).
var errPunchedMeanwhile = errors.New("punched meanwhile")

// errStale: the file is no longer the stub a recall serves.
var errStale = errors.New("stale recall")

// write is invisible I/O: it writes verified bytes (consecutive buffers
// from off) into a hole and puts the file's times back. Out of space, it
// asks the space monitor to free some (NoSpace) and tries once more.
func (f *fileRecall) write(ctx context.Context, bufs [][]byte, off int64) error {
	// The storage-enforced right (shared; a change takes it exclusively,
	// on any node): held from the check to the write, so that this node,
	// paused in between, cannot write old bytes over a file made resident
	// and changed meanwhile.
	return stub.UnderRight(f.fd, stub.ForRecallWrite, f.m.Acting, func(rec *stub.Record) error {
		if rec == nil || rec.Key != f.key {
			return fmt.Errorf("%s: no longer the stub of %s: %w", f.path, f.key, errStale)
		}
		if err := failpoint.Hit(failpoint.RecallBeforeWrite); err != nil {
			return err
		}
		asked := false
		for _, b := range bufs {
			for len(b) > 0 {
				n, err := unix.Pwrite(f.fd, b, off)
				if errors.Is(err, unix.ENOSPC) && !asked && f.m.NoSpace != nil {
					asked = true
					if err := f.m.NoSpace(ctx, int64(len(b))); err != nil {
						return fmt.Errorf("write backing file: out of space: %w", err)
					}
					continue
				}
				if err != nil {
					return fmt.Errorf("write backing file: %w", err)
				}
				b, off = b[n:], off+int64(n)
			}
		}
		if err := failpoint.Hit(failpoint.RecallAfterWrite); err != nil {
			return err
		}
		return stub.RestoreTimes(f.fd, &f.st)
	})
}

// commitIfComplete records a fully recalled file as premigrated: its data
// is local again and the archive copy is still valid.
//
// Not under f.mu: the sync of a large file takes long, and readers of the
// file are served meanwhile. commitMu keeps two streams that end together
// from committing at once; makeResident waits for the streams, and so
// for this, before it drops the record.
func (f *fileRecall) commitIfComplete() error {
	f.commitMu.Lock()
	defer f.commitMu.Unlock()
	f.mu.Lock()
	if f.rec == nil || f.rec.State != stub.Migrated {
		f.mu.Unlock()
		return nil
	}
	rec := *f.rec
	f.mu.Unlock()
	if hole, err := stub.FirstMissing(f.fd, &rec, 0, rec.Size); err != nil || hole < rec.Size {
		return err
	}
	// The record claims the recalled bytes are local: durable first.
	if err := stub.SyncData(f.fd); err != nil {
		return err
	}
	if err := failpoint.Hit(failpoint.RecallBeforeRecord); err != nil {
		return err
	}
	rec.State = stub.Premigrated
	if rec.Unverified {
		// An imported object, whole here now: its checksums are made of
		// what came (bound to its ETag), for every later recall and scrub.
		if err := f.m.checksumImported(f.file, &rec); err != nil {
			return err
		}
	}
	// Under the exclusive right, checked inside: the file is still the
	// migrated stub this recall served (an old owner that paused must not
	// mark a file changed since as premigrated). Not waited for: a holder
	// (a recall write of a paused old owner) must not keep the readers
	// waiting; the file stays migrated, all local, until a later event.
	unlock, err := stub.TryLockCommit(f.fd, false)
	if errors.Is(err, unix.EAGAIN) {
		f.m.log.Info("recalled file left migrated: its right is held elsewhere", "file", f.path)
		return nil
	}
	if err != nil {
		return err
	}
	defer unlock()
	err = f.m.Fence.Run(func() error {
		if cur, err := stub.ReadRecord(f.fd); err != nil || cur == nil || cur.Key != f.key || cur.State != stub.Migrated {
			return cmp.Or(err, fmt.Errorf("%s: no longer the stub of %s: %w", f.path, f.key, errStale))
		}
		// And still whole: a release of an old owner may have punched it
		// between the look above and the right.
		if hole, err := stub.FirstMissing(f.fd, &rec, 0, rec.Size); err != nil || hole < rec.Size {
			return cmp.Or(err, fmt.Errorf("%s: punched at %d meanwhile: %w", f.path, hole, errPunchedMeanwhile))
		}
		// A premigrated record is trusted while its watch is there; nothing
		// could change a migrated file without removing its record first.
		if _, err := stub.Watch(f.fd); err != nil {
			return err
		}
		return stub.WriteRecord(f.fd, &rec)
	})
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m.log.Info("recalled", "file", f.path, "bytes", rec.Size, "fetched", f.fetched)
	f.m.count(1, 0)
	f.rec = &rec
	return nil
}

// settle waits until no stream of the file runs, so that the commit of
// the last one is done, and commits the file if it is whole and still
// migrated (its bytes were all here before; a commit that failed is
// tried again).
func (f *fileRecall) settle(ctx context.Context) error {
	defer f.wakeWhenDone(ctx)()
	f.mu.Lock()
	for len(f.streams) > 0 && ctx.Err() == nil {
		f.cond.Wait()
	}
	f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	return f.commitIfComplete()
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
	// Exclusive: a recall write still in flight on any node (an old owner
	// that paused) ends before the record goes and the change comes.
	return stub.UnderRight(f.fd, stub.ForChange, f.m.Acting, func(cur *stub.Record) error {
		// Looked at again under the right: an old owner that paused
		// holding it between its record write and its punch punched the
		// file after this node found it whole. Its bytes are recalled
		// again first.
		if cur == nil || cur.Key != f.key {
			return fmt.Errorf("%s: no longer the stub of %s: %w", f.path, f.key, errStale)
		}
		if hole, err := stub.FirstMissing(f.fd, f.rec, 0, f.rec.Size); err != nil {
			return err
		} else if hole < f.rec.Size {
			return fmt.Errorf("%s: punched at %d meanwhile: %w", f.path, hole, errPunchedMeanwhile)
		}
		// Without its record the file's local bytes are all there is.
		if err := stub.SyncData(f.fd); err != nil {
			return err
		}
		err := dmapi.DropReference(f.m.garbage, f.fd, f.path, f.rec.Key, func() error {
			return f.m.Fence.Run(func() error { return stub.RemoveRecord(f.fd) })
		})
		if err == nil {
			f.rec = nil
		}
		return err
	})
}

// holdBack lets readers go first: a bulk stream nobody reads through
// waits while readers wait, and a reader's stream while a reader of a
// lighter user waits (at most maxYield each chunk).
func (m *Manager) holdBack(ctx context.Context, s *stream) {
	switch {
	case s.hurried.Load():
	case s.bulk:
		m.yieldToReaders(ctx)
	default:
		m.yieldToLighter(ctx, s.uid)
	}
}

// takeStream takes a stream slot for user uid; bulk work takes a bulk
// token first, so that it never holds the slots kept for readers.
func (m *Manager) takeStream(ctx context.Context, bulk bool, uid uint32) error {
	if bulk {
		select {
		case m.bulkStreams <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := m.streams.take(ctx, uid); err != nil {
		if bulk {
			<-m.bulkStreams
		}
		return err
	}
	return nil
}

// tryStream takes a stream slot if one is free at once, for a prefetch:
// never the slot past MaxStreams (see slots).
func (m *Manager) tryStream(bulk bool, uid uint32) bool {
	if bulk {
		select {
		case m.bulkStreams <- struct{}{}:
		default:
			return false
		}
	}
	if !m.streams.try(uid) {
		if bulk {
			<-m.bulkStreams
		}
		return false
	}
	return true
}

func (m *Manager) putStream(bulk bool, uid uint32) {
	m.streams.put(uid)
	if bulk {
		<-m.bulkStreams
	}
}

// slots bound the GET streams: max at once, and one more that only a
// user holding none may take, so that one user's streams (which outlive
// the events that started them) never make another user's first read
// wait for one of them to end.
type slots struct {
	mu      sync.Mutex
	max     int
	used    int
	waiters int // callers blocked in take
	by      map[uint32]int
	free    chan struct{} // closed (and replaced) when a slot is given back
}

func newSlots(max int) *slots {
	return &slots{max: max, by: map[uint32]int{}, free: make(chan struct{})}
}

func (s *slots) take(ctx context.Context, uid uint32) error {
	for {
		s.mu.Lock()
		if s.used < s.max || (s.used == s.max && s.by[uid] == 0) {
			s.used++
			s.by[uid]++
			s.mu.Unlock()
			return nil
		}
		free := s.free
		s.waiters++
		s.mu.Unlock()
		select {
		case <-free:
		case <-ctx.Done():
		}
		s.mu.Lock()
		s.waiters--
		s.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// try takes a slot within max at once, or none.
func (s *slots) try(uid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used >= s.max {
		return false
	}
	s.used++
	s.by[uid]++
	return true
}

// contended reports whether a caller waits for a slot.
func (s *slots) contended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters > 0
}

func (s *slots) put(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used--
	if s.by[uid]--; s.by[uid] <= 0 {
		delete(s.by, uid)
	}
	close(s.free)
	s.free = make(chan struct{})
}

// Cancel stops the GETs of the file's recall streams (an admin's cancel):
// what they wrote stays, verified; the next event starts new streams.
func (m *Manager) Cancel(ino uint64) {
	m.mu.Lock()
	f := m.files[ino]
	m.mu.Unlock()
	if f == nil {
		return
	}
	f.mu.Lock()
	for _, s := range f.streams {
		s.cancel()
	}
	f.mu.Unlock()
}

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
