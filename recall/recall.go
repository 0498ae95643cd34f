// Package recall holds the recall workers: they take DM events, fetch the
// migrated bytes with ranged GETs, verify them chunk by chunk, write them
// into the backing file with invisible I/O, commit the stub change and let
// the session answer the event.
package recall

import (
	"context"
	"errors"
	"fmt"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/throttle"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Config holds the recall settings. SmallFile, Window and MaxWindow are
// filesystem settings, with their defaults in package settings (no
// manager starts without them); DefaultConfig gives the rest.
type Config struct {
	// SmallFile: files up to this size are recalled whole on first touch.
	SmallFile int64
	// Window: the first streaming GET of a large file covers this much.
	Window int64
	// MaxWindow: a sequential reader doubles the window up to this size.
	MaxWindow int64
	// MaxStreams bounds concurrent GET streams across all files.
	MaxStreams int
	// Retries: how often a failed GET is retried before the reader gets EIO.
	Retries int
}

// DefaultConfig returns what is not a filesystem setting.
func DefaultConfig() Config {
	return Config{
		MaxStreams: 8, // GET streams of one filesystem at once: two cores' worth of verify and write
		Retries:    3, // a GET that fails this often in a row is the archive's fault: EIO
	}
}

// ErrIntegrity means recalled bytes did not match their checksum.
var ErrIntegrity = archive.ErrIntegrity

// ErrStubChanged means the backing file no longer matches its stub record.
var ErrStubChanged = errors.New("stub changed behind the DM application")

// Manager handles the DM events of one managed filesystem.
type Manager struct {
	root    *beneath.Root
	arch    archive.Archive
	rights  *dmapi.Rights
	cfg     Config
	log     *slog.Logger
	streams *slots
	// chunkBufs keeps the chunk buffers of ended streams for the next
	// ones (*[]byte): a stream takes up to streamPieces of them.
	chunkBufs sync.Pool
	// bulkStreams bounds the streams of bulk work (admin recalls) below
	// MaxStreams: the rest are kept for readers.
	bulkStreams chan struct{}
	// garbage records archive copies made stale when a recalled file is
	// about to change, before its record goes.
	garbage dmapi.Garbage
	// Fence guards every commit (nil: a single node, no fencing).
	Fence dmapi.Fence
	// Acting, if set, fails once this node may no longer act for the
	// filesystem: a node paused past its lease must not write recalled
	// bytes into a file another node may have changed since.
	Acting func() error
	// Throttle, if set, caps the bytes per second fetched.
	Throttle *throttle.Throttle
	// Keys open the chunks of sealed objects (the setting
	// encryption-key-file; nil: none can be opened).
	Keys *seal.Keyring
	// Counted, if set, is told of bytes fetched and of files recalled whole.
	Counted func(files int, bytes int64)
	// CopyCounted, if set, is told of reads moved to the next archive copy
	// and of bad copies repaired.
	CopyCounted func(faults, repairs int)
	// NoSpace, if set, is asked to free need bytes when a recall's write
	// fails with ENOSPC (the space monitor's out-of-space event).
	NoSpace func(ctx context.Context, need int64) error
	// beforeDrop, in tests, runs between the look at a premigrated file
	// and its drop (the window a release can hit).
	beforeDrop func()
	// afterLook, in tests, runs between a reader's look for the first
	// missing byte and its look for a stream that will write it.
	afterLook func()

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	copies     copies // faults and repairs of the archive's copies
	repairOnce sync.Once

	mu      sync.Mutex
	files   map[uint64]*fileRecall
	history map[uint64]*history

	// Readers waiting on recalls, and a channel closed when none is:
	// bulk streams hold back between chunks while readers wait, so that
	// the archive and the CPU serve the readers first. The same for all
	// recalls (readers' and admins'), which background uploads yield to.
	waitMu            sync.Mutex
	readers, recalls  int
	readersIdle, idle chan struct{}
	// readersBy counts waiting readers per user: a user's streams hold
	// back while a user with fewer waits (yieldToLighter).
	readersBy map[uint32]int
}

// maxYield bounds how long a bulk stream holds back for readers per
// chunk: readers that never stop cannot starve it.
const maxYield = 200 * time.Millisecond

// waits counts a recall event (a reader's of user uid, or not) until it
// ends.
func (m *Manager) waits(reader bool, uid uint32) func() {
	m.waitMu.Lock()
	if m.recalls == 0 {
		m.idle = make(chan struct{})
	}
	m.recalls++
	if reader {
		if m.readers == 0 {
			m.readersIdle = make(chan struct{})
		}
		m.readers++
		if m.readersBy == nil {
			m.readersBy = map[uint32]int{}
		}
		m.readersBy[uid]++
	}
	m.waitMu.Unlock()
	return func() {
		m.waitMu.Lock()
		if m.recalls--; m.recalls == 0 {
			close(m.idle)
		}
		if reader {
			if m.readers--; m.readers == 0 {
				close(m.readersIdle)
			}
			if m.readersBy[uid]--; m.readersBy[uid] <= 0 {
				delete(m.readersBy, uid)
			}
		}
		m.waitMu.Unlock()
	}
}

// lighterWaiting reports whether a reader of a user with fewer readers
// waiting than user uid waits now.
func (m *Manager) lighterWaiting(uid uint32) bool {
	m.waitMu.Lock()
	defer m.waitMu.Unlock()
	mine := m.readersBy[uid]
	for u, n := range m.readersBy {
		if u != uid && n < mine {
			return true
		}
	}
	return false
}

// yieldToLighter holds a stream of user uid back between chunks while a
// reader of a lighter user (fewer readers waiting) waits, at most
// maxYield: users share the archive, the link and the CPU fairly, so one
// user's many reads cannot make another's first bytes wait behind theirs.
func (m *Manager) yieldToLighter(ctx context.Context, uid uint32) {
	deadline := time.Now().Add(maxYield)
	for m.lighterWaiting(uid) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// yieldToReaders waits while readers wait (at most maxYield).
func (m *Manager) yieldToReaders(ctx context.Context) {
	m.waitMu.Lock()
	idle, waiting := m.readersIdle, m.readers > 0
	m.waitMu.Unlock()
	yield(ctx, idle, waiting)
}

// YieldToRecalls waits while any recall runs (at most maxYield): the
// space monitor's uploads go after readers and admins.
func (m *Manager) YieldToRecalls(ctx context.Context) {
	m.waitMu.Lock()
	idle, waiting := m.idle, m.recalls > 0
	m.waitMu.Unlock()
	yield(ctx, idle, waiting)
}

func yield(ctx context.Context, idle chan struct{}, waiting bool) {
	if !waiting {
		return
	}
	t := time.NewTimer(maxYield)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	case <-ctx.Done():
	}
}

// history is what a file's recall state leaves behind when its last event
// and stream end: the next reader of the same file goes on with the same
// window and checksums instead of starting over.
type history struct {
	key             string
	sums            []uint32
	lastEnd, window int64
	fetched         int64
	used            time.Time
}

// historySize bounds the files remembered.
const historySize = 256

// NewManager returns a manager for the backing tree root.
func NewManager(root *beneath.Root, arch archive.Archive, rights *dmapi.Rights, garbage dmapi.Garbage, cfg Config, log *slog.Logger) *Manager {
	if cfg.SmallFile <= 0 || cfg.Window <= 0 {
		panic("recall: Config without SmallFile and Window (settings.Defaults has them)")
	}
	d := DefaultConfig()
	cfg.MaxWindow = max(cfg.MaxWindow, cfg.Window)
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = d.MaxStreams
	}
	if cfg.Retries <= 0 {
		cfg.Retries = d.Retries
	}
	m := &Manager{root: root, arch: arch, rights: rights, garbage: garbage, cfg: cfg, log: log,
		streams: newSlots(cfg.MaxStreams), files: map[uint64]*fileRecall{}, history: map[uint64]*history{},
		bulkStreams: make(chan struct{}, max(1, cfg.MaxStreams-max(1, cfg.MaxStreams/4)))}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// Close stops every stream and waits for them.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// open opens the file of an event: by its file handle, which survives a
// rename since the event was raised, else by its path; either way only a
// regular file inside the backing tree (a handle can name any file of the
// backing filesystem, and events come from peers).
func (m *Manager) open(ev *dmapi.Event, flags int) (int, error) {
	if len(ev.Handle) > 0 {
		fd, err := stub.OpenHandle(m.root.FD(), ev.Handle, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		if err == nil {
			if _, err := m.root.Rel(fd); err == nil {
				return checkRegular(fd, 0)
			}
			// Outside the tree, or a file whose dentry the kernel had
			// dropped: opened by handle, it has no path to check (it
			// reads as "/"). The path is checked beneath the root, and
			// acquire checks the inode it finds there.
			unix.Close(fd)
		} else if errors.Is(err, unix.ESTALE) {
			return fd, err // the file is gone
		}
		// Not allowed (not root), not supported, or not provably inside:
		// the path.
	}
	fd, err := m.root.OpenFD(ev.Path, flags)
	if err != nil {
		return -1, err
	}
	return checkRegular(fd, ev.Ino)
}

// checkRegular keeps fd if it is a regular file (of inode ino, if not 0).
func checkRegular(fd int, ino uint64) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, errors.New("not a regular file")
	}
	if ino != 0 && st.Ino != ino {
		unix.Close(fd)
		return -1, fmt.Errorf("replaced (inode %d, event for %d): %w", st.Ino, ino, ErrStubChanged)
	}
	return fd, nil
}

// Handle is the session's handler.
func (m *Manager) Handle(ctx context.Context, ev *dmapi.Event) error {
	switch ev.Type {
	case dmapi.Read, dmapi.Write, dmapi.Truncate:
	case dmapi.Destroy:
		return m.destroy(ctx, ev)
	default:
		return fmt.Errorf("recall: unexpected event %s", ev)
	}
	var f *fileRecall
	for attempt := 0; ; attempt++ {
		var err error
		if f, err = m.acquire(ev); err != nil {
			m.log.Error("recall failed", "fs", ev.FS, "file", ev.Path, "reason", err)
			return err
		}
		if f != nil {
			break
		}
		if ev.Type == dmapi.Read {
			return nil // resident or premigrated: nothing to recall
		}
		// A release may punch the premigrated file between the look and
		// the drop (a truncate by path holds no handle that would stop
		// it): then the file must be recalled first, as a migrated one.
		if m.beforeDrop != nil {
			m.beforeDrop()
		}
		err = m.dropPremigrated(ev)
		if !errors.Is(err, errReleasedMeanwhile) || attempt == 2 {
			return err
		}
	}
	defer m.releaseFile(f)
	release := m.rights.Shared(f.ino)
	defer release()

	off, end := ev.Offset, ev.Offset+ev.Length
	if ev.Length < 0 || ev.Type != dmapi.Read || f.rec.Size <= m.cfg.SmallFile {
		off, end = 0, f.rec.Size
	}
	end = min(end, f.rec.Size)
	inMemory := ev.Type == dmapi.Read && ev.Serve != nil
	if inMemory && ev.Serve.Off < end && ev.Serve.End() > off {
		// The reader waits for its own bytes only; a small file's
		// stream still fetches it whole (its window is the file).
		off, end = max(off, ev.Serve.Off), min(end, ev.Serve.End())
	}
	adminWhole := !inMemory && ev.Priority > dmapi.PriorityReader && off == 0 && end == f.rec.Size
	defer m.waits(ev.Type == dmapi.Read && ev.Priority == dmapi.PriorityReader, ev.UID)()
	for attempt := 0; ; attempt++ {
		if err := f.ensure(ctx, off, end, ev.Priority > dmapi.PriorityReader, ev.UID, inMemory); err != nil {
			if ctx.Err() != nil && m.ctx.Err() == nil {
				m.log.Info("recall event ended before its data came (cancelled)", "fs", ev.FS, "file", ev.Path, "offset", off)
			} else {
				m.log.Error("recall failed", "fs", ev.FS, "file", ev.Path, "offset", off, "reason", err)
			}
			return err
		}
		if ev.Type == dmapi.Read {
			if adminWhole {
				// An admin's recall of the whole file: done when the
				// file says so (premigrated), not when its last bytes
				// are written and the commit still runs.
				return f.settle(ctx)
			}
			if !inMemory || ev.Serve.Fill(f.serveInto) != 0 || attempt == 2 {
				return nil
			}
			// Its chunks went with a stream that stopped (cancelled,
			// or cut short) before it wrote them: fetch them again.
			continue
		}
		err := f.makeResident()
		if !errors.Is(err, errPunchedMeanwhile) || attempt == 2 {
			return err
		}
		m.log.Warn("file punched while it was made resident; recalling it again", "file", ev.Path, "reason", err)
	}
}

func (m *Manager) destroy(ctx context.Context, ev *dmapi.Event) error {
	if ev.Key == "" {
		return fmt.Errorf("destroy %s: no object key", ev.Path)
	}
	if err := failpoint.Hit(failpoint.DestroyBeforeDelete); err != nil {
		return err
	}
	return m.Fence.Run(func() error {
		if err := m.arch.Delete(ctx, ev.Key); err != nil {
			return err
		}
		for _, c := range archive.Companions(ev.Key) {
			if err := m.arch.Delete(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// errReleasedMeanwhile: a premigrated file was released while a change
// was making it resident.
var errReleasedMeanwhile = errors.New("released meanwhile")

// dropPremigrated makes a premigrated file resident before it changes:
// its data is all local, only the record (and the archive copy) go.
func (m *Manager) dropPremigrated(ev *dmapi.Event) error {
	fd, err := m.open(ev, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return fmt.Errorf("open backing file: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	defer m.rights.Shared(st.Ino)()
	// Under the storage right: a release of an old owner paused past its
	// confirm still holds it, and must finish (or fail) before the record
	// goes and the object is deleted; else its late punch would land on
	// a resident file, under a record naming a deleted object.
	return stub.UnderRight(fd, stub.ForChange, m.Acting, func(rec *stub.Record) error {
		if rec == nil {
			return nil
		}
		if rec.State != stub.Premigrated {
			return fmt.Errorf("%s: record changed to %s while it was made resident: %w", ev.Path, rec.State, errReleasedMeanwhile)
		}
		return dmapi.DropReference(m.garbage, fd, ev.Path, rec.Key, func() error {
			return m.Fence.Run(func() error { return stub.RemoveRecord(fd) })
		})
	})
}

// acquire opens the file's recall state, shared by all events on it.
// It returns nil when the file has nothing to recall.
func (m *Manager) acquire(ev *dmapi.Event) (*fileRecall, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.files[ev.Ino]; f != nil && f.rec != nil {
		f.refs++
		return f, nil
	}
	fd, err := m.open(ev, unix.O_RDWR|unix.O_NOATIME|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", err)
	}
	file := os.NewFile(uintptr(fd), ev.Path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		file.Close()
		return nil, err
	}
	if ev.Ino != 0 && st.Ino != ev.Ino {
		file.Close()
		return nil, fmt.Errorf("%s was replaced (inode %d, event for %d): %w", ev.Path, st.Ino, ev.Ino, ErrStubChanged)
	}
	rec, err := stub.ReadRecord(fd)
	if err != nil {
		file.Close()
		return nil, err
	}
	if rec == nil || rec.State != stub.Migrated {
		file.Close()
		return nil, nil
	}
	if st.Size != rec.Size {
		file.Close()
		return nil, fmt.Errorf("size %d, record says %d: %w", st.Size, rec.Size, ErrStubChanged)
	}
	// The times to put back after each write: the mtime is the record's. A
	// migrated file cannot change through the mount without its record
	// going first, so a different mtime is what a crash between a write and
	// its time restore left; the next write repairs it.
	st.Mtim = unix.NsecToTimespec(rec.MtimeNs)
	f := &fileRecall{m: m, ino: st.Ino, path: ev.Path, file: file, fd: fd, rec: rec, key: rec.Key, refs: 1, st: st}
	f.cond = sync.NewCond(&f.mu)
	if h := m.history[st.Ino]; h != nil && h.key == rec.Key {
		f.sums, f.lastEnd, f.window, f.fetched = h.sums, h.lastEnd, h.window, h.fetched
	}
	m.files[st.Ino] = f
	return f, nil
}

func (m *Manager) releaseFile(f *fileRecall) {
	m.mu.Lock()
	f.refs--
	last := f.refs == 0
	if last && m.files[f.ino] == f {
		delete(m.files, f.ino)
		m.remember(f)
	}
	m.mu.Unlock()
	if last {
		f.file.Close()
	}
}

// remember keeps the state of a file whose recall went idle; m.mu is held.
func (m *Manager) remember(f *fileRecall) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rec == nil || f.rec.State != stub.Migrated {
		delete(m.history, f.ino) // resident or fully recalled: nothing to go on with
		return
	}
	if _, ok := m.history[f.ino]; !ok && len(m.history) >= historySize {
		var oldest uint64
		for ino, h := range m.history {
			if _, ok := m.history[oldest]; !ok || h.used.Before(m.history[oldest].used) {
				oldest = ino
			}
		}
		delete(m.history, oldest)
	}
	m.history[f.ino] = &history{key: f.rec.Key, sums: f.sums, lastEnd: f.lastEnd, window: f.window, fetched: f.fetched, used: time.Now()}
}

func isNotFound(err error) bool { return errors.Is(err, archive.ErrNotFound) }

func isCanceled(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (m *Manager) count(files int, bytes int64) {
	if m.Counted != nil {
		m.Counted(files, bytes)
	}
}
