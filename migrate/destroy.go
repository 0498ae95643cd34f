package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// DestroyQueue is the durable queue of DESTROY events: archive objects to
// delete because no file uses them any more. Each entry is a file in dir,
// written and synced before the change that makes the object garbage, so a
// restart finishes what a crash interrupted.
//
// An entry for an unlink is first "prepared"; it becomes ready once the
// unlink happened. An upload is prepared the same way before it starts and
// dropped once the file's record points to the object. A prepared entry
// found at start-up is resolved by looking at the file: still there with
// the same object, the entry is dropped; else the object is garbage.
type DestroyQueue struct {
	dir   string
	fs    string // filesystem name
	root  string // backing directory
	raise func(ctx context.Context, ev *dmapi.Event) error
	log   *slog.Logger
	wake  chan struct{}
	once  sync.Once
	stop  chan struct{}
	done  chan struct{}
}

type destroyEntry struct {
	Event dmapi.Event `json:"event"`
	Ready bool        `json:"ready"`
}

var _ dmapi.Garbage = (*DestroyQueue)(nil)

// NewDestroyQueue opens the queue of filesystem fsName kept in dir. raise
// hands an event to the DM session (which deletes the object).
func NewDestroyQueue(dir, fsName, root string, raise func(context.Context, *dmapi.Event) error, log *slog.Logger) (*DestroyQueue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("destroy queue: %w", err)
	}
	return &DestroyQueue{dir: dir, fs: fsName, root: root, raise: raise, log: log,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// Prepare records that the object key will be garbage unless the file rel
// (inode ino) uses it: before an unlink, a record removal or an upload.
// Commit (garbage now) or Abort (the file uses it) follows.
func (q *DestroyQueue) Prepare(rel string, ino uint64, key string) (token string, err error) {
	ev := dmapi.Event{Token: dmapi.NewToken(), Type: dmapi.Destroy, FS: q.fs, Path: rel, Ino: ino, Key: key, Length: -1}
	return ev.Token, q.write(destroyEntry{Event: ev})
}

// Commit makes a prepared entry ready.
func (q *DestroyQueue) Commit(token string) {
	e, err := q.read(q.path(token))
	if err == nil {
		e.Ready = true
		err = q.write(e)
	}
	if err != nil {
		q.log.Error("DESTROY entry not committed; it is resolved at next start", "token", token, "reason", err)
		return
	}
	q.kick()
}

// Abort drops a prepared entry (the unlink failed, or the upload's record
// was committed).
func (q *DestroyQueue) Abort(token string) { os.Remove(q.path(token)) }

// Pending counts the entries not yet done.
func (q *DestroyQueue) Pending() int {
	names, _ := filepath.Glob(filepath.Join(q.dir, "*.json"))
	return len(names)
}

// Start resolves entries left by a crash and runs the worker until Stop.
func (q *DestroyQueue) Start() {
	go q.run()
	q.kick()
}

// Stop ends the worker; unfinished entries stay on disk for the next start.
func (q *DestroyQueue) Stop() {
	q.once.Do(func() { close(q.stop) })
	<-q.done
}

func (q *DestroyQueue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *DestroyQueue) run() {
	defer close(q.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-q.stop; cancel() }()
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	startup := true
	for {
		q.drain(ctx, startup)
		startup = false
		select {
		case <-q.stop:
			return
		case <-q.wake:
		case <-retry.C:
		}
	}
}

func (q *DestroyQueue) drain(ctx context.Context, startup bool) {
	names, _ := filepath.Glob(filepath.Join(q.dir, "*.json"))
	for _, name := range names {
		if ctx.Err() != nil {
			return
		}
		e, err := q.read(name)
		if err != nil {
			q.log.Error("destroy queue: unreadable entry, left in place", "entry", name, "reason", err)
			continue
		}
		if !e.Ready {
			if !startup {
				continue // its unlink is in progress
			}
			if q.fileStillUses(&e.Event) {
				os.Remove(name)
				continue
			}
		}
		if err := q.raise(ctx, &e.Event); err != nil {
			q.log.Warn("destroy failed, will retry", "key", e.Event.Key, "reason", err)
			continue
		}
		q.log.Info("archive object destroyed", "fs", e.Event.FS, "key", e.Event.Key)
		os.Remove(name)
	}
}

// fileStillUses reports whether the file of a prepared unlink still exists
// with the same object: the unlink did not happen.
func (q *DestroyQueue) fileStillUses(ev *dmapi.Event) bool {
	fd, err := unix.Open(filepath.Join(q.root, ev.Path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ELOOP)
	}
	defer unix.Close(fd)
	rec, err := stub.ReadRecord(fd)
	if err != nil {
		return true // cannot tell: keep the object
	}
	return rec != nil && rec.Key == ev.Key
}

func (q *DestroyQueue) path(token string) string {
	return filepath.Join(q.dir, strings.ReplaceAll(token, "/", "_")+".json")
}

func (q *DestroyQueue) read(name string) (destroyEntry, error) {
	var e destroyEntry
	b, err := os.ReadFile(name)
	if err == nil {
		err = json.Unmarshal(b, &e)
	}
	return e, err
}

// write replaces an entry atomically and durably.
func (q *DestroyQueue) write(e destroyEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(q.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("destroy queue: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(b); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), q.path(e.Event.Token))
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(q.dir); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("destroy queue: %w", err)
	}
	return nil
}
