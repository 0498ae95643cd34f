package stub

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/holder"
	"github.com/cascadefs/cascadefs/internal/protect"
	"golang.org/x/sys/unix"
)

// XattrName is where the record lives on the backing file. The FUSE layer
// hides every attribute under XattrPrefix from users of the mount.
const (
	XattrPrefix = "user.cascadefs."
	XattrName   = XattrPrefix + "stub"
)

// ReadRecord returns the record of the open backing file, or nil when the
// file has none (it is resident). A record that does not decode is an error
// wrapping ErrCorrupt or ErrVersion: never trusted, never ignored.
//
// A record is trusted only on the file it was written for (its Ino): one
// found on another file (copied there through the backing tree, or by a
// restore of stubs with their xattrs) is a *ForeignError, never a record.
func ReadRecord(fd int) (*Record, error) {
	return readRecordOf(fd, func() (uint64, error) {
		var st unix.Stat_t
		err := unix.Fstat(fd, &st)
		return st.Ino, err
	})
}

// ReadRecordOf is ReadRecord for a caller that knows fd's inode already
// (an open handle of the mount): no fstat on the read path.
func ReadRecordOf(fd int, ino uint64) (*Record, error) {
	return readRecordOf(fd, func() (uint64, error) { return ino, nil })
}

// readRecordOf reads fd's record and binds it to the inode that inoOf
// gives (asked only when there is a record: resident files cost no more).
func readRecordOf(fd int, inoOf func() (uint64, error)) (*Record, error) {
	rec, err := readRecord(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, XattrName, buf) })
	if rec == nil || err != nil {
		return rec, err
	}
	ino, err := inoOf()
	if err != nil {
		return nil, fmt.Errorf("read stub record: %w", err)
	}
	return bound(rec, ino)
}

// ErrForeign: a stub record found on a file it was not written for.
var ErrForeign = errors.New("stub record belongs to another file")

// ForeignError is a record found on another file than its own: Rec says
// which object it names (kept, never deleted for this file), Ino where it
// was found.
type ForeignError struct {
	Rec *Record
	Ino uint64
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("%v: written for inode %d, found on inode %d; not trusted (its object %s is kept until reconcile finds no record using it)",
		ErrForeign, e.Rec.Ino, e.Ino, e.Rec.Key)
}

func (e *ForeignError) Unwrap() error { return ErrForeign }

// bound returns rec if it was written for inode ino.
func bound(rec *Record, ino uint64) (*Record, error) {
	if rec.Ino != ino && !protect.Off(protect.RecordBinding) {
		return nil, &ForeignError{Rec: rec, Ino: ino}
	}
	return rec, nil
}

// ReadRecordAt is ReadRecord by path, without following a symlink in the
// last component (tests; the daemon goes through ReadRecordIn).
func ReadRecordAt(path string) (*Record, error) {
	rec, err := readRecord(func(buf []byte) (int, error) { return unix.Lgetxattr(path, XattrName, buf) })
	if rec == nil || err != nil {
		return rec, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, err
	}
	return bound(rec, st.Ino)
}

// ReadRecordIn is ReadRecord for the entry name of the open directory
// dirfd, never following a symlink: getxattrat where the kernel has it
// (6.13+: no open per file), else an O_NOFOLLOW open of the entry.
func ReadRecordIn(dirfd int, name string) (*Record, error) {
	if !noGetxattrat.Load() {
		rec, err := readRecord(func(buf []byte) (int, error) { return getxattrat(dirfd, name, XattrName, buf) })
		if !errors.Is(err, unix.ENOSYS) {
			if rec == nil || err != nil {
				return rec, err
			}
			var st unix.Stat_t
			if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return nil, err
			}
			return bound(rec, st.Ino)
		}
		noGetxattrat.Store(true)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return ReadRecord(fd)
}

var noGetxattrat atomic.Bool

// getxattrat(2): struct xattr_args { u64 value; u32 size; u32 flags; }.
func getxattrat(dirfd int, name, attr string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := struct {
		value uint64
		size  uint32
		flags uint32
	}{uint64(uintptr(unsafe.Pointer(&buf[0]))), uint32(len(buf)), 0}
	n, _, errno := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// recordBufs: a scan reads a million records; one buffer each would be
// gigabytes of garbage. Decode copies what it keeps.
var recordBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

func readRecord(get func([]byte) (int, error)) (*Record, error) {
	bp := recordBufs.Get().(*[]byte)
	defer recordBufs.Put(bp)
	buf := *bp
	for {
		n, err := get(buf)
		switch {
		case errors.Is(err, unix.ENODATA):
			return nil, nil
		case errors.Is(err, unix.ERANGE):
			buf = make([]byte, 2*len(buf)) // rare: not pooled
			if len(buf) > 1<<20 {
				return nil, fmt.Errorf("%w: oversized", ErrCorrupt)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("read stub record: %w", err)
		}
		return Decode(buf[:n])
	}
}

// WriteRecord stores the record on the open backing file.
//
// The record is bound to the file: written for another inode (a record
// read from one file and written onto another), it is refused.
func WriteRecord(fd int, r *Record) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("write stub record: %w", err)
	}
	if r.Ino == 0 {
		r.Ino = st.Ino
	}
	if r.Ino != st.Ino && !protect.Off(protect.RecordBinding) {
		return fmt.Errorf("write stub record: written for inode %d, refused on inode %d: %w", r.Ino, st.Ino, ErrForeign)
	}
	b, err := r.Encode()
	if err != nil {
		return err
	}
	if err := unix.Fsetxattr(fd, XattrName, b, 0); err != nil {
		return fmt.Errorf("write stub record: %w", err)
	}
	return nil
}

// WriteRecordSync is WriteRecord made durable (fsync: an xattr is
// metadata that fdatasync may leave behind) before it returns.
func WriteRecordSync(fd int, r *Record) error {
	if err := WriteRecord(fd, r); err != nil {
		return err
	}
	if protect.Off(protect.DurabilitySync) {
		return nil
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("sync stub record: %w", err)
	}
	return nil
}

// SyncData makes the bytes written to the file durable (fdatasync), before
// a record change claims them.
func SyncData(fd int) error {
	if protect.Off(protect.DurabilitySync) {
		return nil
	}
	if err := unix.Fdatasync(fd); err != nil {
		return fmt.Errorf("sync data: %w", err)
	}
	return nil
}

// WatchName holds a token that the migrator sets before it copies a file
// and that every change through any mount removes (Unwatch): a write
// open, the close of a written handle, a truncate, an fallocate, a time
// change. A premigrated record is valid only while the watch is there, so
// a change that keeps size and mtime (futimens, a rewrite within one
// timestamp tick) is still seen.
const WatchName = XattrPrefix + "watch"

// Watch sets a fresh watch token on the file and returns it.
func Watch(fd int) (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	token := hex.EncodeToString(b[:])
	if err := unix.Fsetxattr(fd, WatchName, []byte(token), 0); err != nil {
		return "", fmt.Errorf("set watch: %w", err)
	}
	return token, nil
}

// Watched reports whether the file still has the watch token (any token
// when token is ""): nothing changed it since Watch.
func Watched(fd int, token string) (bool, error) {
	var buf [64]byte
	n, err := unix.Fgetxattr(fd, WatchName, buf[:])
	switch {
	case errors.Is(err, unix.ENODATA):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read watch: %w", err)
	}
	return token == "" || string(buf[:n]) == token, nil
}

// Unwatch removes the watch: the file changes. Cheap when there is none
// (one getxattr, no metadata write).
func Unwatch(fd int) error {
	if ok, err := Watched(fd, ""); !ok {
		return err
	}
	if err := unix.Fremovexattr(fd, WatchName); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove watch: %w", err)
	}
	return nil
}

// RemoveRecord makes the file resident. Removing a missing record is fine.
func RemoveRecord(fd int) error {
	if err := unix.Fremovexattr(fd, XattrName); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove stub record: %w", err)
	}
	return nil
}

// punchSlack extends the punched range past EOF so that the last partial
// block is deallocated, not merely zeroed (ext4 and xfs zero partial blocks
// in place, which would read back as data).
const punchSlack = 1 << 20

// Punch releases the data blocks of the file from offset from (a block
// boundary: the leader kept on disk) to its end, keeping its size, and
// checks that no data remains there.
// It punches in two steps (split at a MiB boundary, so no block is only
// zeroed), so that a crash between them can be tested: the record says
// migrated before any punch, so half-punched data is never read as local.
func Punch(fd int, from, size int64) error {
	if from >= size {
		return nil
	}
	half := ((from + size) / 2) &^ (punchSlack - 1)
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if half > from {
		if err := unix.Fallocate(fd, mode, from, half-from); err != nil {
			return fmt.Errorf("punch: %w", err)
		}
		if err := failpoint.Hit(failpoint.MigrateInsidePunch); err != nil {
			return err
		}
	} else {
		half = from
	}
	if err := unix.Fallocate(fd, mode, half, size-half+punchSlack); err != nil {
		return fmt.Errorf("punch: %w", err)
	}
	if off, err := unix.Seek(fd, from, unix.SEEK_DATA); err == nil {
		return fmt.Errorf("punch: data remains at offset %d", off)
	} else if !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("punch: seek data: %w", err)
	}
	return nil
}

// FirstHole returns the first offset in [off, end) that is a hole in the
// backing file, or end when the whole range holds data. In a migrated file
// the holes are exactly the regions still in the archive: recalled bytes are
// written whole and only after verification, so any data block is correct.
func FirstHole(fd int, off, end int64) (int64, error) {
	if off >= end {
		return end, nil
	}
	h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if errors.Is(err, unix.ENXIO) { // off is at or past EOF
		return end, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seek hole: %w", err)
	}
	return min(h, end), nil
}

// NextData returns the first offset in [off, end) that holds data, or end.
func NextData(fd int, off, end int64) (int64, error) {
	if off >= end {
		return end, nil
	}
	d, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return end, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seek data: %w", err)
	}
	return min(d, end), nil
}

// ResidentBytes counts the bytes of [0, size) that hold data.
func ResidentBytes(fd int, size int64) (int64, error) {
	var total int64
	for off := int64(0); off < size; {
		d, err := NextData(fd, off, size)
		if err != nil || d >= size {
			return total, err
		}
		h, err := FirstHole(fd, d, size)
		if err != nil {
			return total, err
		}
		total += h - d
		off = h
	}
	return total, nil
}

// MtimeNs is the modification time of st in nanoseconds.
func MtimeNs(st *unix.Stat_t) int64 { return st.Mtim.Sec*1e9 + st.Mtim.Nsec }

// Unchanged reports whether the file still matches the record's copy.
func (r *Record) Unchanged(st *unix.Stat_t) bool {
	return st.Size == r.Size && MtimeNs(st) == r.MtimeNs && st.Ino == r.Ino
}

// RestoreTimes puts back atime and mtime after invisible writes, so that
// recall does not look like a change to users or to the next migration.
func RestoreTimes(fd int, st *unix.Stat_t) error {
	ts := []unix.Timespec{unix.Timespec(st.Atim), unix.Timespec(st.Mtim)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), ts, 0); err != nil {
		return fmt.Errorf("restore times: %w", err)
	}
	return nil
}

// IsCorrupt reports an error that means "the record cannot be trusted", as
// opposed to an I/O failure.
func IsCorrupt(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrVersion) || errors.Is(err, ErrNotStub)
}

// commitLockOffset is the byte range of the backing file that the commit
// lock covers: far past any real data, so that it never meets the locks
// users take through the mount.
const commitLockOffset = ReservedLocks

// ReservedLocks is where the daemon's own byte-range locks begin; users'
// locks through the mount are kept below it.
const ReservedLocks = 1 << 62

// LockCommit takes the file's cross-node commit lock (an OFD lock, which
// every process on every node of the shared filesystem sees), waiting for
// it; the returned function releases it. A record commit of a new archive
// copy holds it exclusively (fd open for writing), the removal of a
// stub's name shared (fd open for reading), so that a name removed on one
// node and a record written on another can never interleave (the object
// would leak).
func LockCommit(fd int, shared bool) (unlock func(), err error) {
	return lockCommit(fd, shared, true)
}

// RightUse is why the storage right is taken, which says how.
type RightUse int

const (
	// ForChange: a change of the file's state; exclusive.
	ForChange RightUse = iota
	// ForRecallWrite: a recall writes verified bytes into the file's
	// holes; shared (with other recall writes).
	ForRecallWrite
)

// UnderRight is the step of the per-file protocol that every change goes
// through (see "The per-file protocol" above): it takes fd's storage
// right for use, waiting for any holder on any node; then checks acting
// (the caller's lease; nil: none to check), so that a node paused past
// its lease stops here; then reads the record again, since no look made
// before the right is trusted; and runs fn with it, the right held
// throughout. An old owner paused after its own look (a release past its
// confirm) thus finishes or fails before anyone else changes the file.
func UnderRight(fd int, use RightUse, acting func() error, fn func(cur *Record) error) error {
	var unlock func()
	var err error
	switch use {
	case ForRecallWrite:
		unlock, err = protect.Take(protect.RightRecallWrite, func() (func(), error) { return LockCommit(fd, true) })
	default:
		unlock, err = protect.Take(protect.RightMakeResident, func() (func(), error) { return LockCommit(fd, false) })
	}
	if err != nil {
		return err
	}
	defer unlock()
	if acting != nil {
		if err := acting(); err != nil {
			return err
		}
	}
	cur, err := ReadRecord(fd)
	if err != nil {
		return err
	}
	return fn(cur)
}

// TryLockCommit is LockCommit without the wait: it fails with
// unix.EAGAIN while another holder excludes it.
func TryLockCommit(fd int, shared bool) (unlock func(), err error) {
	return lockCommit(fd, shared, false)
}

// readShieldOffset is the byte a kernel passthrough reader holds shared
// for as long as its open lasts, and a release takes exclusively (without
// waiting) just before its punch: the kernel reads a passthrough file
// without asking us, so only a lock that every node sees keeps a punch
// off a file some node opened that way. A byte of its own, apart from the
// commit lock: a file being made resident, recalled or rewritten need
// not wait for its readers.
const readShieldOffset = commitLockOffset + 1

// ShieldReads takes the read shield of fd's file shared, without waiting
// (unix.EAGAIN while a release holds it); the returned function drops it.
func ShieldReads(fd int) (unlock func(), err error) {
	return lockByte(fd, readShieldOffset, true, false)
}

// ShieldReadsOn takes the read shield shared on fd's own open file
// description, without waiting, and never lets it go: it lasts as long
// as that description. The kernel keeps the description it was given as
// the backing file of an inode's passthrough opens for as long as any of
// them is open, whatever becomes of the daemon that gave it: a daemon's
// other locks die with it (kill -9), while its handles read and write
// the file on. fd must be open for reading.
func ShieldReadsOn(fd int) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: readShieldOffset, Len: 1}
	if err := tryOFDLock(fd, &lk); err != nil {
		return fmt.Errorf("read shield: %w", err)
	}
	return nil
}

// tryOFDLock tries once to take the OFD lock lk on fd's description
// (retried on EINTR); a conflicting holder is unix.EAGAIN.
func tryOFDLock(fd int, lk *unix.Flock_t) error {
	for {
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, lk)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EACCES):
			return unix.EAGAIN
		}
		return err
	}
}

// TryExcludeReaders takes the read shield exclusively, without waiting:
// it fails with unix.EAGAIN while any node has the file open by
// passthrough.
func TryExcludeReaders(fd int) (unlock func(), err error) {
	return lockByte(fd, readShieldOffset, false, false)
}

func lockCommit(fd int, shared, wait bool) (unlock func(), err error) {
	return lockByte(fd, commitLockOffset, shared, wait)
}

// lockByte takes an OFD lock of one byte of fd's file.
func lockByte(fd int, offset int64, shared, wait bool) (unlock func(), err error) {
	// A lock of its own open file description: OFD locks of one
	// description never exclude each other, and one unlock would drop
	// another holder's lock too (a recall stream and a commit of the same
	// file share a descriptor).
	mode := unix.O_RDWR
	kind := int16(unix.F_WRLCK)
	if shared {
		mode, kind = unix.O_RDONLY, unix.F_RDLCK
	}
	self := fmt.Sprintf("/proc/self/fd/%d", fd)
	own, err := unix.Open(self, mode|unix.O_CLOEXEC|unix.O_NOATIME|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.EPERM) { // O_NOATIME needs the owner or CAP_FOWNER
		own, err = unix.Open(self, mode|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("file lock: %w", err)
	}
	lk := unix.Flock_t{Type: kind, Whence: 0, Start: offset, Len: 1}
	policy := stoppedHolders.Load()
	watch := holder.Watch{Grace: policy.Grace}
	if protect.Off(protect.StoppedHolderKill) {
		watch.Grace = 0
	}
	started, looked := time.Now(), time.Now()
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err = tryOFDLock(own, &lk)
		if !wait || !errors.Is(err, unix.EAGAIN) {
			break
		}
		// Waited for a while: a holder of this program on this host that
		// stays stopped past the grace is ended, as a crash would end it.
		if watch.Grace > 0 && time.Since(started) > time.Second && time.Since(looked) > time.Second {
			looked = time.Now()
			if pid := watch.Saw(holder.StoppedOFDHolder(own, offset)); pid != 0 {
				policy.Log.Error("a process holding a file's right was stopped; killed it", "pid", pid, "after", watch.Grace.String())
			}
		}
		time.Sleep(delay)
	}
	if err != nil {
		unix.Close(own)
		return nil, fmt.Errorf("file lock: %w", err)
	}
	return func() { unix.Close(own) }, nil // closing the description drops its lock
}

// StoppedHolderPolicy is how a waiter for a file's right treats a holder
// of this same program on this host that stays stopped (SIGSTOP, a
// frozen process): past Grace it kills it, as the repository's lock
// holder is (0: never), and says so in Log. Nodes set Grace to twice
// their lease: past it, the holder's lease has lapsed and another node
// serves its filesystems. Across hosts the shared filesystem breaks a
// dead or stopped client's locks (see docs/DEPLOY.md).
type StoppedHolderPolicy struct {
	Grace time.Duration
	Log   *slog.Logger
}

var stoppedHolders atomic.Pointer[StoppedHolderPolicy]

func init() {
	stoppedHolders.Store(&StoppedHolderPolicy{Log: slog.New(slog.DiscardHandler)})
}

// SetStoppedHolderPolicy sets the policy of this process (a node daemon
// sets it at start).
func SetStoppedHolderPolicy(p StoppedHolderPolicy) { stoppedHolders.Store(&p) }
