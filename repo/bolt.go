package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cascadefs/cascadefs/internal/clock"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/holder"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// FileName is the bbolt file inside a repository directory.
const FileName = "cascadefs.db"

var (
	bucketFS     = []byte("fs")
	bucketNodes  = []byte("nodes")
	bucketLocks  = []byte("locks")
	bucketEvents = []byte("events")
	bucketMeta   = []byte("meta")
	bucketLeases = []byte("leases") // made on first use: older files lack it
	allBuckets   = [][]byte{bucketFS, bucketNodes, bucketLocks, bucketEvents, bucketMeta}
	formatKey    = []byte("format")
	formatValue  = []byte("cascadefs-repo-1")
)

// Bolt is the repository in one bbolt file. Each call opens the file,
// runs one transaction under bbolt's file lock (flock) and closes it, so
// node processes on one host share it safely. bbolt is NOT safe over NFS
// (its lock and mmap need a local or shared-disk filesystem).
type Bolt struct {
	path    string
	timeout time.Duration

	holder string     // this handle's identity as a lease holder (random)
	judge  LeaseJudge // of the others' leases, by this process's boot clock
	log    *slog.Logger
}

// newBolt is a handle of the repository file at path, with an identity
// of its own as a lease holder.
func newBolt(path string, log *slog.Logger) *Bolt {
	var id [8]byte
	rand.Read(id[:])
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bolt{path: path, timeout: 10 * time.Second, holder: hex.EncodeToString(id[:]), judge: LeaseJudge{Now: clock.Boot}, log: log}
}

var _ Repository = (*Bolt)(nil)

// Open opens the repository in dir; it must have been created. log (nil:
// none) hears what the engine does on its own (a stopped lock holder
// killed).
func Open(dir string, log *slog.Logger) (*Bolt, error) {
	b := newBolt(filepath.Join(dir, FileName), log)
	if _, err := os.Stat(b.path); err != nil {
		return nil, fmt.Errorf("%w in %s (cascadefs fs add creates one)", ErrNoRepo, dir)
	}
	return b, b.view(context.Background(), func(*bolt.Tx) error { return nil })
}

// Create creates the repository in dir (an existing directory) unless it
// is there already, and opens it.
func Create(dir string, log *slog.Logger) (*Bolt, error) {
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("repository directory %s: not a directory", dir)
	}
	b := newBolt(filepath.Join(dir, FileName), log)
	return b, b.update(context.Background(), func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta != nil && string(meta.Get(formatKey)) == string(formatValue) {
			return nil
		}
		if meta != nil || tx.Bucket(bucketFS) != nil {
			return fmt.Errorf("%w: %s has an unknown format", ErrCorrupt, b.path)
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(formatKey, formatValue)
	}, true)
}

func (b *Bolt) String() string { return filepath.Dir(b.path) }

// Close does nothing: no call keeps the file open.
func (b *Bolt) Close() error { return nil }

func (b *Bolt) open(ctx context.Context, readOnly, create bool) (*bolt.DB, error) {
	if !create {
		if _, err := os.Stat(b.path); err != nil {
			return nil, fmt.Errorf("%w at %s", ErrNoRepo, b.path)
		}
	}
	db, err := b.openLocked(ctx, readOnly)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s stayed locked for %s", ErrLocked, b.path, b.timeout)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, b.path, err)
	default:
		return nil, fmt.Errorf("repository %s: %w", b.path, err)
	}
}

// openLocked opens the file under bbolt's file lock. A holder that keeps
// the lock while stopped (SIGSTOP, a frozen process) would wedge every node
// for as long as it stays stopped: once one has held it stopped for
// stoppedGrace, it is killed, as a crash would end it (bbolt's commits
// survive a crash at any point). Any other holder is waited for up to the
// timeout, or until ctx ends.
func (b *Bolt) openLocked(ctx context.Context, readOnly bool) (*bolt.DB, error) {
	deadline := time.Now().Add(b.timeout)
	watch := holder.Watch{Grace: stoppedGrace}
	for {
		db, err := bolt.Open(b.path, 0o600, &bolt.Options{Timeout: lockPoll, ReadOnly: readOnly})
		if !errors.Is(err, bolterrors.ErrTimeout) || time.Now().After(deadline) {
			return db, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("repository %s: %w", b.path, ctx.Err())
		}
		if pid := watch.Saw(holder.StoppedFlockHolder(b.path)); pid != 0 {
			b.log.Error("repository: the process holding its lock was stopped; killed it", "pid", pid, "file", b.path)
		}
	}
}

const (
	lockPoll     = 200 * time.Millisecond
	stoppedGrace = time.Second
)

// view runs a read-only transaction; a file without our buckets is corrupt.
func (b *Bolt) view(ctx context.Context, fn func(*bolt.Tx) error) (err error) {
	db, err := b.open(ctx, true, false)
	if err != nil {
		return err
	}
	defer db.Close()
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some damaged pages
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, b.path, r)
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		if err := checkFormat(tx, b.path); err != nil {
			return err
		}
		return fn(tx)
	})
}

func (b *Bolt) update(ctx context.Context, fn func(*bolt.Tx) error, create ...bool) (err error) {
	creating := len(create) > 0 && create[0]
	db, err := b.open(ctx, false, creating)
	if err != nil {
		return err
	}
	defer db.Close()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, b.path, r)
		}
	}()
	return db.Update(func(tx *bolt.Tx) error {
		if !creating {
			if err := checkFormat(tx, b.path); err != nil {
				return err
			}
		}
		if err := failpoint.Hit(failpoint.RepoInUpdate); err != nil {
			return err
		}
		return fn(tx)
	})
}

func checkFormat(tx *bolt.Tx, path string) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil || string(meta.Get(formatKey)) != string(formatValue) {
		return fmt.Errorf("%w: %s is not a cascadefs repository", ErrCorrupt, path)
	}
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("%w: %s lacks bucket %s", ErrCorrupt, path, name)
		}
	}
	return nil
}

func get[T any](bk *bolt.Bucket, key, kind string) (T, error) {
	var v T
	raw := bk.Get([]byte(key))
	if raw == nil {
		return v, fmt.Errorf("%s %q: %w", kind, key, ErrNotFound)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("%w: %s %q: %v", ErrCorrupt, kind, key, err)
	}
	return v, nil
}

func put(bk *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return bk.Put([]byte(key), raw)
}

func list[T any](bk *bolt.Bucket, kind string) ([]T, error) {
	var out []T
	err := bk.ForEach(func(k, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrCorrupt, kind, k, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

func (b *Bolt) AddFS(ctx context.Context, fs FS) error {
	if err := ValidName("filesystem", fs.Name); err != nil {
		return err
	}
	return b.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketFS)
		if bk.Get([]byte(fs.Name)) != nil {
			return fmt.Errorf("filesystem %q: %w", fs.Name, ErrExists)
		}
		return put(bk, fs.Name, fs)
	})
}

func (b *Bolt) GetFS(ctx context.Context, name string) (fs FS, err error) {
	err = b.view(ctx, func(tx *bolt.Tx) error {
		fs, err = get[FS](tx.Bucket(bucketFS), name, "filesystem")
		return err
	})
	return fs, err
}

func (b *Bolt) ListFS(ctx context.Context) (out []FS, err error) {
	err = b.view(ctx, func(tx *bolt.Tx) error {
		out, err = list[FS](tx.Bucket(bucketFS), "filesystem")
		return err
	})
	return out, err
}

func (b *Bolt) UpdateFS(ctx context.Context, name string, fn func(*FS) error) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketFS)
		fs, err := get[FS](bk, name, "filesystem")
		if err != nil {
			return err
		}
		owner, epoch, history := fs.Owner, fs.Epoch, fs.Takeovers
		if err := fn(&fs); err != nil {
			return err
		}
		fs.Name, fs.Owner, fs.Epoch, fs.Takeovers = name, owner, epoch, history
		return put(bk, name, fs)
	})
}

func (b *Bolt) RemoveFS(ctx context.Context, name string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketFS)
		if bk.Get([]byte(name)) == nil {
			return fmt.Errorf("filesystem %q: %w", name, ErrNotFound)
		}
		if err := bk.Delete([]byte(name)); err != nil {
			return err
		}
		if ev := tx.Bucket(bucketEvents); ev.Bucket([]byte(name)) != nil {
			return ev.DeleteBucket([]byte(name))
		}
		return nil
	})
}

func (b *Bolt) PutNode(ctx context.Context, n Node) error {
	if err := ValidName("node", n.Name); err != nil {
		return err
	}
	return b.update(ctx, func(tx *bolt.Tx) error { return put(tx.Bucket(bucketNodes), n.Name, n) })
}

func (b *Bolt) ListNodes(ctx context.Context) (out []Node, err error) {
	err = b.view(ctx, func(tx *bolt.Tx) error {
		out, err = list[Node](tx.Bucket(bucketNodes), "node")
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

func (b *Bolt) Renew(ctx context.Context, node string, ttl time.Duration) error {
	if err := ValidName("node", node); err != nil {
		return err
	}
	return b.update(ctx, func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketLeases)
		if err != nil {
			return err
		}
		l, err := get[LeaseRecord](bk, node, "lease")
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		return put(bk, node, l.Renew(b.holder, ttl))
	})
}

// DropLease marks the lease dropped: not live, at once. The record stays,
// so that its term goes on counting (see leaseRecord).
func (b *Bolt) DropLease(ctx context.Context, node string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		if bk == nil {
			return nil
		}
		l, err := get[LeaseRecord](bk, node, "lease")
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return put(bk, node, l.Drop())
	})
}

func (b *Bolt) Leases(ctx context.Context) (out []NodeLease, err error) {
	err = b.view(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, raw []byte) error {
			var l LeaseRecord
			if err := json.Unmarshal(raw, &l); err != nil {
				return fmt.Errorf("%w: lease %q: %v", ErrCorrupt, k, err)
			}
			if l.Dropped {
				return nil
			}
			out = append(out, NodeLease{Node: string(k), TTL: l.TTL(), Live: b.judge.Live(string(k), l)})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, err
}

// leaseLive reads and judges node's lease inside a transaction.
func (b *Bolt) leaseLive(tx *bolt.Tx, node string) (bool, error) {
	bk := tx.Bucket(bucketLeases)
	if bk == nil {
		return false, nil
	}
	l, err := get[LeaseRecord](bk, node, "lease")
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return b.judge.Live(node, l), nil
}

func (b *Bolt) Claim(ctx context.Context, name, node, from, reason string) (out FS, err error) {
	err = b.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketFS)
		fs, err := get[FS](bk, name, "filesystem")
		if err != nil {
			return err
		}
		if err := claimFrom(&fs, node, from, reason, func() (bool, error) { return b.leaseLive(tx, from) }); err != nil {
			return err
		}
		out = fs
		return put(bk, name, fs)
	})
	return out, err
}

func (b *Bolt) Move(ctx context.Context, name, from string, epoch uint64, to, reason string) (out FS, err error) {
	err = b.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketFS)
		fs, err := get[FS](bk, name, "filesystem")
		if err != nil {
			return err
		}
		if err := moveFrom(&fs, from, epoch, to, reason); err != nil {
			return err
		}
		out = fs
		return put(bk, name, fs)
	})
	return out, err
}

func (b *Bolt) Confirm(ctx context.Context, name, node string, epoch uint64) error {
	return confirm(ctx, b, name, node, epoch)
}

func (b *Bolt) PutEntry(ctx context.Context, fs, token string, data []byte) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		bk, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(fs))
		if err != nil {
			return err
		}
		return bk.Put([]byte(token), data)
	})
}

func (b *Bolt) GetEntry(ctx context.Context, fs, token string) (data []byte, err error) {
	err = b.view(ctx, func(tx *bolt.Tx) error {
		var v []byte
		if bk := tx.Bucket(bucketEvents).Bucket([]byte(fs)); bk != nil {
			v = bk.Get([]byte(token))
		}
		if v == nil {
			return fmt.Errorf("event %q: %w", token, ErrNotFound)
		}
		data = append([]byte(nil), v...) // bbolt's memory is gone after the transaction
		return nil
	})
	return data, err
}

func (b *Bolt) DeleteEntry(ctx context.Context, fs, token string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		if bk := tx.Bucket(bucketEvents).Bucket([]byte(fs)); bk != nil {
			return bk.Delete([]byte(token))
		}
		return nil
	})
}

func (b *Bolt) ListEntries(ctx context.Context, fs string) (out map[string][]byte, err error) {
	out = map[string][]byte{}
	err = b.view(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketEvents).Bucket([]byte(fs))
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			out[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	return out, err
}
