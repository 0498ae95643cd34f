// Package migrate copies files to the archive (premigration), releases
// their data (migration proper), and deletes archive objects that no
// longer back a file.
package migrate

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/internal/throttle"
	"github.com/cascadefs/cascadefs/namespace"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Gate is what the FUSE layer offers migration, so that nothing is punched
// under a user's feet.
type Gate interface {
	// Commit runs fn while no write through the mount is in progress on
	// the file or can start.
	Commit(ino uint64, fn func() error) error
	// CommitCopy is Commit for the record of a new archive copy: refused
	// (dmapi.ErrBusy) while the file is open for writing.
	CommitCopy(ino uint64, fn func() error) error
	// Release runs fn when the file is open nowhere through the mount,
	// holding new opens meanwhile. It waits at most wait for open handles
	// to close, then gives up with dmapi.ErrBusy. fn calls confirm just
	// before its punch: it fails once the holds may have ended.
	Release(ctx context.Context, ino uint64, wait time.Duration, fn func(confirm func() error) error) error
}

// ErrChangedDuringMigration: the file changed while it was being copied.
var ErrChangedDuringMigration = errors.New("file changed during migration")

// Config holds the migration settings.
type Config struct {
	FS        string // filesystem name, part of every object key
	ChunkSize int64  // verification chunk (default stub.DefaultChunkSize)
	// ReleaseWait: how long a release waits for open handles (0 or
	// less: not at all, a file open anywhere is skipped; the setting
	// release-wait).
	ReleaseWait time.Duration
}

// KeptHead is where a release with the given leader starts punching: the
// leader rounded up to a whole block, so that no block is only zeroed.
func KeptHead(leader int64, st *unix.Stat_t) int64 {
	if leader <= 0 {
		return 0
	}
	blk := max(int64(st.Blksize), 512)
	return (leader + blk - 1) / blk * blk
}

// Migrator migrates the files of one managed filesystem.
type Migrator struct {
	root   *beneath.Root
	arch   archive.Archive
	rights *dmapi.Rights
	gate   Gate
	cfg    Config
	log    *slog.Logger
	// Garbage records each upload before it starts and each stale copy
	// before its record goes, so that no object leaks across a crash.
	garbage dmapi.Garbage
	// Fence guards every commit (nil: a single node, no fencing).
	Fence dmapi.Fence
	// Throttle, if set, caps the bytes per second uploaded.
	Throttle *throttle.Throttle
	// Yield, if set, holds the space monitor's uploads back while
	// recalls run: readers and admins go first.
	Yield func(ctx context.Context)
	// Counted, if set, is told of every migration that succeeded.
	Counted func(Result)
	// Acting, if set, fails once this node may no longer act for the
	// filesystem (its lease lapsed): checked under the file's right
	// before each change.
	Acting func() error
	// Keys, if set, seal every upload with their current key (the
	// setting encryption-key-file); nil: uploads go in the clear.
	Keys *seal.Keyring
	// leader: a release keeps the file's first leader bytes (rounded up
	// to the backing filesystem's block) on disk; the policy's, kept in
	// step by SetLeader.
	leader atomic.Int64
}

// SetLeader sets the bytes a release keeps at a file's head (the
// policy's Leader; `fs set` changes it without a restart).
func (m *Migrator) SetLeader(n int64) { m.leader.Store(n) }

// New returns a migrator for the backing tree root.
func New(root *beneath.Root, arch archive.Archive, rights *dmapi.Rights, gate Gate, garbage dmapi.Garbage, cfg Config, log *slog.Logger) *Migrator {
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = stub.DefaultChunkSize
	}
	return &Migrator{root: root, arch: arch, rights: rights, gate: gate, garbage: garbage, cfg: cfg, log: log}
}

// Result is the outcome of one file's migration.
type Result struct {
	Path     string     `json:"path"`
	State    stub.State `json:"state"`
	Uploaded int64      `json:"uploaded"` // bytes sent to the archive
	Released int64      `json:"released"` // bytes punched
	Key      string     `json:"key,omitempty"`
}

// Migrate copies the file at rel (relative to the backing directory,
// never through a symlink) to the archive and, unless premigrateOnly,
// releases its data. A non-zero ino is the inode found earlier at rel: a
// file put in its place since is refused (beneath.ErrReplaced).
func (m *Migrator) Migrate(ctx context.Context, rel string, ino uint64, premigrateOnly bool) (Result, error) {
	return m.migrate(ctx, rel, ino, premigrateOnly, m.cfg.ReleaseWait)
}

// MigrateIdle is Migrate for the space monitor: a file open anywhere, or
// being recalled or migrated, is not waited for (dmapi.ErrBusy at once);
// the next cycle will see it again.
func (m *Migrator) MigrateIdle(ctx context.Context, rel string, ino uint64, premigrateOnly bool) (Result, error) {
	return m.migrate(context.WithValue(ctx, backgroundKey{}, true), rel, ino, premigrateOnly, 0)
}

// backgroundKey marks the context of the space monitor's migrations.
type backgroundKey struct{}

// yielding calls yield before each MiB of a background upload: held
// back by recalls that never stop, it still moves a MiB per yield.
type yielding struct {
	ctx   context.Context
	r     io.Reader
	yield func(context.Context)
	since int // bytes read since the last yield
}

const yieldEvery = 1 << 20

func (y *yielding) Read(p []byte) (int, error) {
	if y.since >= yieldEvery || y.since == 0 {
		y.yield(y.ctx)
		y.since = 0
	}
	n, err := y.r.Read(p)
	y.since += max(n, 1)
	return n, err
}

func (m *Migrator) migrate(ctx context.Context, rel string, ino uint64, premigrateOnly bool, wait time.Duration) (Result, error) {
	wait = max(wait, 0)
	res, err := m.migrateFile(ctx, rel, ino, premigrateOnly, wait)
	if err == nil && m.Counted != nil {
		m.Counted(res)
	}
	return res, err
}

func (m *Migrator) migrateFile(ctx context.Context, rel string, ino uint64, premigrateOnly bool, wait time.Duration) (Result, error) {
	res := Result{Path: rel}
	seen := time.Now() // a rename after this is in the namespace journal
	fd, err := m.root.OpenAt(rel, unix.O_RDWR|unix.O_NOATIME|unix.O_NONBLOCK, ino)
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", rel, err)
	}
	file := os.NewFile(uintptr(fd), rel)
	defer file.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return res, fmt.Errorf("migrate %s: %w", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return res, fmt.Errorf("migrate %s: not a regular file", rel)
	}
	if st.Size == 0 {
		return res, nil // nothing to release: an empty file stays resident
	}
	if wait > 0 {
		defer m.rights.Exclusive(st.Ino)()
	} else {
		// Idle migrations never wait: a recall may itself be waiting for
		// the space this migration is to free.
		release, ok := m.rights.TryExclusive(st.Ino)
		if !ok {
			return res, fmt.Errorf("migrate %s: a recall or migration of it is in progress: %w", rel, dmapi.ErrBusy)
		}
		defer release()
	}

	rec, err := stub.ReadRecord(fd)
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", rel, err)
	}
	stale, err := staleCopy(fd, rec, &st)
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", rel, err)
	}
	if stale {
		// Changed behind our back since the copy: that copy is stale. The
		// record goes under the storage right, looked at again there: a
		// node paused past its own look must not remove a record another
		// wrote meanwhile.
		err := dmapi.DropReference(m.garbage, fd, rel, rec.Key, func() error {
			return m.gate.Commit(st.Ino, func() error {
				return stub.UnderRight(fd, stub.ForChange, m.Acting, func(cur *stub.Record) error {
					var now unix.Stat_t
					if err := unix.Fstat(fd, &now); err != nil {
						return err
					}
					if cur == nil || cur.Key != rec.Key {
						return ErrChangedDuringMigration
					}
					if stale, err := staleCopy(fd, cur, &now); err != nil || !stale {
						return cmp.Or(err, ErrChangedDuringMigration)
					}
					return m.Fence.Run(func() error { return stub.RemoveRecord(fd) })
				})
			})
		})
		if err != nil {
			return res, fmt.Errorf("migrate %s: %w", rel, err)
		}
		rec = nil
	}
	if rec == nil {
		if rec, err = m.copy(ctx, file, rel, seen, &st); err != nil {
			return res, fmt.Errorf("migrate %s: %w", rel, err)
		}
		res.Uploaded = rec.PackedSize()
	}
	res.State, res.Key = rec.State, rec.Key
	if premigrateOnly {
		return res, nil
	}
	if rec.State == stub.Premigrated && KeptHead(m.leader.Load(), &st) >= st.Size {
		return res, nil // all of it is leader: a release would free nothing
	}
	if err := failpoint.Hit(failpoint.MigrateAfterPremigrate); err != nil {
		return res, fmt.Errorf("migrate %s: %w", rel, err)
	}
	released, err := m.release(ctx, fd, rec, wait)
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", rel, err)
	}
	res.State, res.Released = stub.Migrated, released
	return res, nil
}

// copy uploads the file and records it premigrated, if it did not change
// meanwhile.
func (m *Migrator) copy(ctx context.Context, file *os.File, rel string, seen time.Time, before *unix.Stat_t) (*stub.Record, error) {
	size := before.Size
	// Any change through any mount from now on removes the watch; the
	// commit checks it is still ours.
	watch, err := stub.Watch(int(file.Fd()))
	if err != nil {
		return nil, err
	}
	rec := &stub.Record{State: stub.Premigrated, Key: m.newKey(before.Ino), Size: size,
		MtimeNs: stub.MtimeNs(before), Ino: before.Ino, ChunkSize: m.cfg.ChunkSize, MigratedAt: time.Now().Unix()}

	// The copy must match what a crash leaves on disk: written-back data,
	// not dirty pages that a crash may lose (synced again at the commit).
	if err := stub.SyncData(int(file.Fd())); err != nil {
		return nil, err
	}
	// Runs of whole chunks that are holes are not uploaded (a VM image
	// or database file of 1 GiB may hold a few MiB).
	if rec.Holes, err = stub.HoleRuns(int(file.Fd()), size, rec.ChunkSize); err != nil {
		return nil, err
	}
	data, sums, err := m.objectBody(file, rec)
	if err != nil {
		return nil, err
	}
	// Noted before the upload: a crash before the record is written leaves
	// an object no file uses, deleted at the next start.
	token, err := m.garbage.Prepare(int(file.Fd()), rel, rec.Key, dmapi.Discard)
	if err != nil {
		return nil, err
	}
	discard := func() { m.garbage.Commit(token) }
	body := m.Throttle.Reader(ctx, data)
	if m.Yield != nil && ctx.Value(backgroundKey{}) != nil && ctx.Value(waitedKey{}) == nil {
		body = &yielding{ctx: ctx, r: body, yield: m.Yield}
	}
	info, err := m.arch.Put(ctx, rec.Key, body, rec.PackedSize())
	chunkSums, serr := sums()
	if err == nil {
		err = serr
	}
	if err != nil {
		discard()
		return nil, err
	}
	rec.ETag = info.ETag
	if blob := rec.SetSums(chunkSums); blob != nil {
		if _, err := m.arch.Put(ctx, archive.SumsKey(rec.Key), bytes.NewReader(blob), int64(len(blob))); err != nil {
			discard()
			return nil, err
		}
	}
	// The description goes up while the copy is verified: one round
	// trip for both (both only read rec).
	described := make(chan error, 1)
	go func() { described <- m.describe(ctx, int(file.Fd()), rel, seen, rec) }()
	err = m.verifyCopy(ctx, rec, false)
	if derr := <-described; err == nil {
		err = derr
	}
	if err != nil {
		discard()
		return nil, err
	}
	if err := failpoint.Hit(failpoint.MigrateAfterUpload); err != nil {
		discard()
		return nil, err
	}
	err = m.gate.CommitCopy(before.Ino, func() error {
		// Held against a removal of the file's name on any node (the
		// gate covers this node only).
		unlock, err := stub.LockCommit(int(file.Fd()), false)
		if err != nil {
			return err
		}
		defer unlock()
		// The record claims the local data matches the archive copy, and
		// it is what keeps the upload's DESTROY entry from being needed:
		// data durable before it, it durable before the entry goes.
		if err := stub.SyncData(int(file.Fd())); err != nil {
			return err
		}
		return m.Fence.Run(func() error {
			if err := failpoint.Hit(failpoint.MigrateBeforeRecord); err != nil {
				return err
			}
			// Looked at last, just before the write: a committer that
			// paused after its fence must not trust an earlier look (the
			// file may have changed, or another node copied it and set
			// its own watch meanwhile).
			var now unix.Stat_t
			if err := unix.Fstat(int(file.Fd()), &now); err != nil {
				return err
			}
			// Removed meanwhile (rm during the upload): a record on a file
			// without a name would keep its object forever.
			if !rec.Unchanged(&now) || now.Nlink == 0 {
				return ErrChangedDuringMigration
			}
			if ok, err := stub.Watched(int(file.Fd()), watch); err != nil || !ok {
				return cmp.Or(err, ErrChangedDuringMigration)
			}
			cur, err := stub.ReadRecord(int(file.Fd()))
			if err != nil {
				return err
			}
			if cur == nil || cur.Key == rec.Key {
				return stub.WriteRecordSync(int(file.Fd()), rec)
			}
			// Another copy's record is there (written by a committer
			// that paused past its own look): it is replaced, and its
			// object goes through the DESTROY queue, never leaked.
			// (Orphan makes the change durable before its entry goes.)
			return dmapi.DropReference(m.garbage, int(file.Fd()), rel, cur.Key, func() error {
				return stub.WriteRecord(int(file.Fd()), rec)
			})
		})
	})
	if err != nil {
		discard()
		return nil, err
	}
	m.garbage.Abort(token) // the record points to it now
	m.log.Info("premigrated", "fs", m.cfg.FS, "file", rel, "bytes", size, "key", rec.Key)
	return rec, nil
}

// objectBody returns what the object of rec holds, and how to wait for
// its chunk checksums once it was read. A plain object's checksums are
// read from the file beside the upload (the page cache serves the
// second reader); a sealed object's are of the sealed chunks, noted as
// they are sealed.
func (m *Migrator) objectBody(file *os.File, rec *stub.Record) (io.Reader, func() ([]uint32, error), error) {
	if m.Keys == nil || protect.Off(protect.SealData) {
		type result struct {
			sums []uint32
			err  error
		}
		c := make(chan result, 1)
		go func() {
			s, err := stub.ComputeSumsOf(file, rec)
			c <- result{s, err}
		}()
		return rec.DataReader(file), func() ([]uint32, error) { r := <-c; return r.sums, r.err }, nil
	}
	key := m.Keys.Current()
	salt := seal.NewSalt()
	rec.Sealed, rec.KeyID, rec.Salt = true, key.ID, salt
	obj, err := key.Object(salt, rec.Key)
	if err != nil {
		return nil, nil, err
	}
	r := newSealingReader(file, rec, obj)
	return r, func() ([]uint32, error) { return r.sums, nil }, nil
}

// describe stores, beside the object, what a rebuild from the archive
// needs to make the file's stub again: the file as it is now, its path
// (seen then) and its directories.
func (m *Migrator) describe(ctx context.Context, fd int, rel string, seen time.Time, rec *stub.Record) error {
	attrs, err := namespace.ReadAttrs(fd)
	if err != nil {
		return err
	}
	raw, err := rec.Encode()
	if err != nil {
		return err
	}
	meta := &namespace.Meta{FS: m.cfg.FS, Path: filepath.Clean(rel), Seen: seen, Attrs: attrs, Record: raw}
	var dirs []string
	for d := filepath.Dir(meta.Path); d != "."; d = filepath.Dir(d) {
		dirs = append(dirs, d)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		f, err := m.root.OpenDir(dirs[i])
		if err != nil {
			return fmt.Errorf("describe %s: %w", rel, err)
		}
		a, err := namespace.ReadDirAttrs(int(f.Fd()))
		f.Close()
		if err != nil {
			return fmt.Errorf("describe %s: %w", rel, err)
		}
		meta.Dirs = append(meta.Dirs, a)
	}
	return meta.Put(ctx, m.arch, m.Keys)
}

// verifyCopy checks that the archive holds the object at its full size
// (and the checksum object for large files). The bytes themselves were
// checked in transit (S3 CRC-32C checksums) and are checked again on every
// recall. Before a release (deep), the object must also be the one
// uploaded (same ETag, where the archive gives one) and the checksum
// object must match the record: the punch makes the archive copy the only
// one.
func (m *Migrator) verifyCopy(ctx context.Context, rec *stub.Record, deep bool) error {
	info, err := m.statData(ctx, rec)
	if err != nil {
		return fmt.Errorf("verify archive copy: %w", err)
	}
	if info.Size != rec.PackedSize() {
		return fmt.Errorf("verify archive copy: object has %d bytes, want %d", info.Size, rec.PackedSize())
	}
	if deep && rec.ETag != "" && info.ETag != "" && info.ETag != rec.ETag {
		return fmt.Errorf("verify archive copy: object %s was replaced (ETag %s, recorded %s)", rec.Key, info.ETag, rec.ETag)
	}
	if rec.InlineSums() {
		return nil
	}
	if !deep {
		if _, err := m.arch.Stat(ctx, archive.SumsKey(rec.Key)); err != nil {
			return fmt.Errorf("verify archive copy: %w", err)
		}
		return nil
	}
	if _, err := archive.ReadSums(ctx, m.arch, rec); err != nil {
		return fmt.Errorf("verify archive copy: %w", err)
	}
	return nil
}

// statData describes rec's data object: in the archive, or, imported, in
// its origin bucket, where it must still be the object imported.
func (m *Migrator) statData(ctx context.Context, rec *stub.Record) (archive.ObjectInfo, error) {
	if !rec.Imported {
		return m.arch.Stat(ctx, rec.Key)
	}
	origin, err := archive.Origin(m.arch, rec.OriginBucket)
	if err != nil {
		return archive.ObjectInfo{}, err
	}
	info, err := origin.Stat(ctx, rec.OriginKey)
	if err == nil && info.ETag != rec.ETag {
		return info, fmt.Errorf("%s/%s: %w", rec.OriginBucket, rec.OriginKey, archive.ErrChanged)
	}
	return info, err
}

// release punches the data of a premigrated (or half-released migrated)
// file, once it is open nowhere and still matches its archive copy. The
// record says migrated before the punch, so a crash in between leaves a
// migrated file whose data is still all there, never a premigrated file
// with holes.
func (m *Migrator) release(ctx context.Context, fd int, rec *stub.Record, wait time.Duration) (int64, error) {
	var released int64
	err := m.gate.Release(ctx, rec.Ino, wait, func(confirm func() error) error {
		if err := failpoint.Hit(failpoint.MigrateReleaseHeld); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if rec.State == stub.Premigrated && !rec.Unchanged(&st) {
			return ErrChangedDuringMigration
		}
		if st.Size != rec.Size {
			return ErrChangedDuringMigration
		}
		if rec.State == stub.Premigrated {
			if ok, err := stub.Watched(fd, ""); err != nil || !ok {
				return cmp.Or(err, ErrChangedDuringMigration)
			}
		}
		// Last look at the archive copy: after the punch it is the only one.
		if err := m.verifyCopy(ctx, rec, true); err != nil {
			return err
		}
		resident, err := stub.ResidentBytes(fd, st.Size)
		if err != nil {
			return err
		}
		migrated := *rec
		migrated.State = stub.Migrated
		// The right, exclusive: no node writes the record back (a time
		// change) or recalls into the file between the last look and the
		// punch.
		return stub.UnderRight(fd, stub.ForChange, m.Acting, func(cur *stub.Record) error {
			if cur == nil || cur.Key != rec.Key || cur.MtimeNs != rec.MtimeNs {
				return ErrChangedDuringMigration
			}
			// The read shield, exclusive: no node has the file open (a
			// passthrough reader would read the holes as zeros, and an
			// open handle trusts what it found resident), and none can
			// open it with the shield until the punch is done. Unlike the
			// holds, it cannot run out while this release is paused.
			unshield, err := protect.Take(protect.ReadShield, func() (func(), error) { return stub.TryExcludeReaders(fd) })
			if errors.Is(err, unix.EAGAIN) {
				return fmt.Errorf("open on a node: %w", dmapi.ErrBusy)
			}
			if err != nil {
				return err
			}
			defer unshield()
			err = m.Fence.Run(func() error {
				if err := confirm(); err != nil {
					return err
				}
				if err := failpoint.Hit(failpoint.MigrateAfterConfirm); err != nil {
					return err
				}
				// Durable before the punch: a crash must never leave
				// holes under a record that does not send reads to the
				// archive.
				if err := stub.WriteRecordSync(fd, &migrated); err != nil {
					return err
				}
				if err := failpoint.Hit(failpoint.MigrateBeforePunch); err != nil {
					return err
				}
				return stub.Punch(fd, KeptHead(m.leader.Load(), &st), st.Size)
			})
			if err != nil {
				return err
			}
			kept, err := stub.ResidentBytes(fd, st.Size)
			if err != nil {
				return err
			}
			released = resident - kept
			return stub.RestoreTimes(fd, &st)
		})
	})
	return released, err
}

// staleCopy reports whether rec is a premigrated copy that no longer
// matches the file (st): its watch is gone, or its size, mtime or inode
// differ.
func staleCopy(fd int, rec *stub.Record, st *unix.Stat_t) (bool, error) {
	if rec == nil || rec.State != stub.Premigrated {
		return false, nil
	}
	watched, err := stub.Watched(fd, "")
	if err != nil {
		return false, err
	}
	return !watched || !rec.Unchanged(st), nil
}

func (m *Migrator) newKey(ino uint64) string { return archive.NewKey(m.cfg.FS, ino).String() }
