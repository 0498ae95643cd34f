package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/namespace"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// DestroyQueue is the durable queue of DESTROY events: archive objects to
// delete because no file uses them any more. Each entry is written to a
// durable Store (the cluster repository) before the change that makes the
// object garbage, so a restart, or another node taking over, finishes what
// a crash interrupted.
//
// An entry is first "prepared" by the node making the change (an unlink,
// a record removal, an upload); it becomes ready once the change happened,
// or is dropped if the file keeps using the object. A prepared entry whose
// node died, or that this node wrote before it restarted (another
// incarnation), is resolved by looking at the file. Entries name the file
// by its handle, which survives renames and names every hard link, and no
// object is deleted while that file's record still names it: a failed
// abort, a rename or a link made meanwhile keep the object. Age never
// resolves an entry: an upload may take longer than any bound.
type DestroyQueue struct {
	store Store
	fs    string // filesystem name
	self  string // this node
	root  string // backing directory
	raise func(ctx context.Context, ev *dmapi.Event) error
	alive func(node string) bool
	// incarnation names this run of this node: entries it prepared and
	// left (a crash) carry an older one.
	incarnation string
	log         *slog.Logger
	wake        chan struct{}
	mu          sync.Mutex
	mine        map[string]destroyEntry // prepared here, not yet committed or aborted
	aborted     map[string]bool         // aborts whose store delete failed: retried
	// resolved: entries of another node's unfinished change, resolved
	// here, by when (drain only): kept for lateWriteGrace.
	resolved map[string]time.Time
	// retention: how long a deleted or replaced version's object is kept
	// (the setting retention; 0: deleted at once).
	retention atomic.Int64
	// journal, if set, is told of the versions that stop being current
	// (for a rebuild from the archive).
	journal atomic.Pointer[namespace.Journal]
	// lock, if set, extends the lock of an object and its companions
	// (the archive locks objects: S3 object lock).
	lock atomic.Pointer[func(ctx context.Context, key string, until time.Time) error]
	// waits: entries whose object is locked, not tried again before.
	waits map[string]time.Time
	runMu sync.Mutex    // guards stop and done: a queue outlives its DM sessions
	stop  chan struct{} // nil while no worker runs
	done  chan struct{}
}

// Store keeps the entries of one filesystem durably.
type Store interface {
	Put(token string, data []byte) error
	Get(token string) ([]byte, error)
	Delete(token string) error
	List() (map[string][]byte, error)
}

type destroyEntry struct {
	Event       dmapi.Event `json:"event"` // Handle names the file, Path is for logs and a fallback
	Ready       bool        `json:"ready"`
	Node        string      `json:"node"`
	Incarnation string      `json:"incarnation,omitempty"`
	Created     time.Time   `json:"created"` // shown, never used to resolve
	Fate        dmapi.Fate  `json:"fate,omitempty"`
	// Committed: when the object became garbage (the committing node's
	// wall clock: retention is days, clocks agree to seconds).
	Committed time.Time `json:"committed,omitzero"`
	// File: the version that a kept object backed, as it was.
	File *KeptFile `json:"file,omitempty"`
	// LockedTo: the object's lock (S3 object lock) was extended to this,
	// the end of its retention.
	LockedTo time.Time `json:"locked_to,omitzero"`
}

// KeptFile is a version of a file whose archive copy is kept after it was
// deleted or replaced: what listing it and bringing it back need.
type KeptFile struct {
	namespace.Attrs
	Record []byte `json:"record"` // its stub record, naming the object
}

// keptFile reads what a version of the open file fd is.
func keptFile(fd int) (*KeptFile, error) {
	attrs, err := namespace.ReadAttrs(fd)
	if err != nil {
		return nil, err
	}
	rec, err := stub.ReadRecord(fd)
	if err != nil || rec == nil {
		return nil, fmt.Errorf("no record to keep: %v", err)
	}
	raw, err := rec.Encode()
	if err != nil {
		return nil, err
	}
	return &KeptFile{Attrs: attrs, Record: raw}, nil
}

var _ dmapi.Garbage = (*DestroyQueue)(nil)

// NewDestroyQueue opens the queue of filesystem fsName, kept in store, as
// node self. raise hands an event to the DM session (which deletes the
// object); alive tells whether another node is up (nil: none is).
func NewDestroyQueue(store Store, fsName, self, root string, raise func(context.Context, *dmapi.Event) error, alive func(string) bool, log *slog.Logger) *DestroyQueue {
	if alive == nil {
		alive = func(string) bool { return false }
	}
	q := &DestroyQueue{store: store, fs: fsName, self: self, root: root, raise: raise, alive: alive,
		incarnation: dmapi.NewToken(), log: log, mine: map[string]destroyEntry{}, aborted: map[string]bool{}, resolved: map[string]time.Time{}, waits: map[string]time.Time{},
		wake: make(chan struct{}, 1)}
	q.Adopt()
	return q
}

// Prepare records that the object key will be garbage unless the open file
// fd (at rel) uses it: before an unlink, a record removal or an upload.
// Commit (garbage now) or Abort (the file uses it) follows.
func (q *DestroyQueue) Prepare(fd int, rel string, key string, fate dmapi.Fate) (token string, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("destroy queue: %w", err)
	}
	handle, _ := stub.HandleOf(fd) // without one, the path serves
	ev := dmapi.Event{Token: dmapi.NewToken(), Type: dmapi.Destroy, FS: q.fs, Path: rel, Ino: st.Ino, Handle: handle, Key: key, Length: -1}
	e := destroyEntry{Event: ev, Node: q.self, Incarnation: q.incarnation, Created: time.Now(), Fate: fate}
	if fate != dmapi.Discard {
		// What the version was, for the listing and for undelete; a file
		// whose record cannot be read keeps its object all the same.
		if e.File, err = keptFile(fd); err != nil {
			q.log.Warn("version kept without its attributes", "file", rel, "key", key, "reason", err)
		}
	}
	if err := q.write(e); err != nil {
		return "", err
	}
	q.mu.Lock()
	q.mine[ev.Token] = e
	q.mu.Unlock()
	return ev.Token, nil
}

// forget drops the memory of a prepared entry, returning it.
func (q *DestroyQueue) forget(token string) (destroyEntry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.mine[token]
	delete(q.mine, token)
	return e, ok
}

// Commit makes a prepared entry ready. If another node resolved it
// meanwhile (this node looked dead, and the object was not there yet), it
// is written again: the object is garbage now.
func (q *DestroyQueue) Commit(token string) {
	mine, known := q.forget(token)
	e, err := q.read(token)
	if err != nil && known {
		e, err = mine, nil
	}
	if err == nil {
		e.Ready, e.Committed = true, time.Now()
		err = q.write(e)
	}
	if err != nil {
		q.log.Error("DESTROY entry not committed; it is resolved later", "token", token, "reason", err)
		return
	}
	if e.Fate != dmapi.Discard {
		op := namespace.OpDelete
		if e.Fate == dmapi.Replaced {
			op = namespace.OpReplace
		}
		q.journal.Load().Add(namespace.JournalEntry{T: e.Committed, Op: op, Key: e.Event.Key, Path: filepath.Clean(e.Event.Path)})
	}
	q.kick()
}

// Abort drops a prepared entry (the unlink failed, or the upload's record
// was committed). If the store cannot drop it now, the worker tries again;
// meanwhile the entry is this live incarnation's, so nothing resolves it.
func (q *DestroyQueue) Abort(token string) {
	q.forget(token)
	if err := q.store.Delete(token); err != nil {
		q.log.Warn("DESTROY entry not dropped; retried", "token", token, "reason", err)
		q.mu.Lock()
		q.aborted[token] = true
		q.mu.Unlock()
		q.kick()
	}
}

// retryAborts drops the entries whose Abort could not.
func (q *DestroyQueue) retryAborts() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for token := range q.aborted {
		if q.store.Delete(token) == nil {
			delete(q.aborted, token)
		}
	}
}

// Pending counts the entries not yet done.
// Keys returns the object keys that entries name, prepared or ready:
// uploads in flight and objects already bound for deletion.
func (q *DestroyQueue) Keys() (map[string]bool, error) {
	all, err := q.store.List()
	if err != nil {
		return nil, err
	}
	keys := make(map[string]bool, len(all))
	for _, raw := range all {
		var e destroyEntry
		if json.Unmarshal(raw, &e) == nil {
			keys[e.Event.Key] = true
		}
	}
	return keys, nil
}

func (q *DestroyQueue) Pending() int {
	all, _ := q.store.List()
	n := 0
	for _, raw := range all {
		var e destroyEntry
		if json.Unmarshal(raw, &e) == nil && q.keeps(&e) {
			continue // kept for the retention, not pending
		}
		n++
	}
	return n
}

// KeptVersion is a deleted or replaced version whose archive copy is kept.
type KeptVersion struct {
	Path  string    `json:"path"` // backing-relative, when it was deleted or replaced
	Fate  string    `json:"fate"` // deleted or replaced
	At    time.Time `json:"at"`   // when
	Until time.Time `json:"until"`
	Size  int64     `json:"size"`
	UID   uint32    `json:"uid"`
	GID   uint32    `json:"gid"`
	Mode  uint32    `json:"mode"`
	Mtime time.Time `json:"mtime"`
	Key   string    `json:"key"`
	Token string    `json:"token"` // its entry in the queue
}

// Kept lists the versions kept for the retention whose path is rel or
// under it ("." for all), newest first.
func (q *DestroyQueue) Kept(rel string) ([]KeptVersion, error) {
	all, err := q.store.List()
	if err != nil {
		return nil, err
	}
	var out []KeptVersion
	for token, raw := range all {
		var e destroyEntry
		if json.Unmarshal(raw, &e) != nil || !q.keeps(&e) {
			continue
		}
		p := filepath.Clean(e.Event.Path) // the FUSE layer's are "./NAME" at the top
		if rel != "." && p != rel && !strings.HasPrefix(p, rel+"/") {
			continue
		}
		out = append(out, q.version(token, e))
	}
	slices.SortFunc(out, func(a, b KeptVersion) int { return b.At.Compare(a.At) })
	return out, nil
}

// version describes a kept entry.
func (q *DestroyQueue) version(token string, e destroyEntry) KeptVersion {
	r := time.Duration(q.retention.Load())
	v := KeptVersion{Path: filepath.Clean(e.Event.Path), Fate: e.Fate.String(), At: e.Committed, Until: e.Committed.Add(r), Key: e.Event.Key, Token: token}
	if f := e.File; f != nil {
		v.Size, v.UID, v.GID, v.Mode, v.Mtime = f.Size, f.UID, f.GID, f.Mode, time.Unix(0, f.MtimeNs)
	}
	return v
}

// SetRetention sets how long deleted and replaced versions are kept (the
// setting retention; `fs set` changes it without a restart, for the
// versions kept already too).
func (q *DestroyQueue) SetRetention(d time.Duration) { q.retention.Store(int64(d)) }

// SetLocker sets how the objects of kept versions are locked to the end
// of their retention (nil: the archive locks nothing). The DM session
// sets it.
func (q *DestroyQueue) SetLocker(lock func(ctx context.Context, key string, until time.Time) error) {
	if lock == nil {
		q.lock.Store(nil)
		return
	}
	q.lock.Store(&lock)
}

// lockKept extends a kept version's lock to the end of its retention,
// once (again if the retention grew).
func (q *DestroyQueue) lockKept(ctx context.Context, e *destroyEntry) {
	lock := q.lock.Load()
	until := e.Committed.Add(time.Duration(q.retention.Load()))
	if lock == nil || !e.LockedTo.Before(until) {
		return
	}
	if err := (*lock)(ctx, e.Event.Key, until); err != nil {
		q.log.Warn("kept version's archive lock not extended; tried again", "key", e.Event.Key, "reason", err)
		return
	}
	e.LockedTo = until
	if err := q.write(*e); err != nil {
		q.log.Warn("destroy queue: entry not written; its lock is extended again", "key", e.Event.Key, "reason", err)
	}
}

// SetJournal sets the namespace journal told of deletions, replacements
// and undeletes.
func (q *DestroyQueue) SetJournal(j *namespace.Journal) { q.journal.Store(j) }

// keeps says whether a ready entry's object is still within its
// retention.
func (q *DestroyQueue) keeps(e *destroyEntry) bool {
	r := time.Duration(q.retention.Load())
	return e.Ready && e.Fate != dmapi.Discard && r > 0 && time.Since(e.Committed) < r
}

// Start resolves entries left by a crash and runs the worker until Stop.
// Each DM session of the filesystem starts it anew.
func (q *DestroyQueue) Start() {
	q.runMu.Lock()
	defer q.runMu.Unlock()
	if q.stop != nil {
		return // running
	}
	q.stop, q.done = make(chan struct{}), make(chan struct{})
	go q.run(q.stop, q.done)
	q.kick()
}

// Stop ends the worker; unfinished entries stay stored for the next start.
func (q *DestroyQueue) Stop() {
	q.runMu.Lock()
	defer q.runMu.Unlock()
	if q.stop == nil {
		return
	}
	close(q.stop)
	<-q.done
	q.stop, q.done = nil, nil
}

func (q *DestroyQueue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *DestroyQueue) run(stop, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	retry := time.NewTicker(2 * time.Second) // entries from other nodes come without a kick
	defer retry.Stop()
	for {
		q.drain(ctx)
		select {
		case <-stop:
			return
		case <-q.wake:
		case <-retry.C:
		}
	}
}

func (q *DestroyQueue) drain(ctx context.Context) {
	q.retryAborts()
	all, err := q.store.List()
	if err != nil {
		q.log.Warn("destroy queue unreadable, will retry", "reason", err)
		return
	}
	for token, raw := range all {
		if ctx.Err() != nil {
			return
		}
		var e destroyEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			q.log.Error("destroy queue: unreadable entry, left in place", "entry", token, "reason", err)
			continue
		}
		if !e.Ready && !q.orphaned(&e) {
			continue // its change is in progress
		}
		if q.keeps(&e) {
			q.lockKept(ctx, &e)
			continue // a deleted or replaced version, kept for the retention
		}
		if until, ok := q.waits[token]; ok && time.Now().Before(until) {
			continue // its object is locked yet
		}
		// Ready or not: no object goes while its file still names it (a
		// hard link left, a rename after a failed abort), looked at and
		// deleted under the file's right.
		use, unlock := q.fileUse(&e.Event)
		switch use {
		case inUse:
			q.log.Info("DESTROY dropped: the file still uses the object", "fs", e.Event.FS, "file", e.Event.Path, "key", e.Event.Key)
			q.store.Delete(token)
			continue
		case rightHeld:
			continue // a commit of the file may be naming the object: next pass
		}
		if !e.Ready && e.Fate != dmapi.Discard && q.retention.Load() > 0 {
			// A change a crash interrupted, found done: the version is
			// garbage from now, and kept for the retention like any.
			unlock()
			e.Ready, e.Committed = true, time.Now()
			if err := q.write(e); err != nil {
				q.log.Warn("destroy queue: resolved entry not written, will retry", "key", e.Event.Key, "reason", err)
			}
			continue
		}
		err := q.raise(ctx, &e.Event)
		unlock()
		var locked *archive.LockedError
		if errors.As(err, &locked) {
			// Object lock keeps it for a while yet: tried again then (a
			// store that does not say until when, every lockRetry).
			next := locked.Until
			if now := time.Now(); next.Before(now) || next.After(now.Add(lockRetry)) {
				next = now.Add(lockRetry)
			}
			if _, known := q.waits[token]; !known {
				q.log.Info("archive object locked; the DESTROY waits for its lock to end", "key", e.Event.Key, "reason", err)
			}
			q.waits[token] = next
			continue
		}
		delete(q.waits, token)
		if err != nil {
			q.log.Warn("destroy failed, will retry", "key", e.Event.Key, "reason", err)
			continue
		}
		if !e.Ready && e.Node != q.self && e.Incarnation != orphanMark {
			// Another node's upload that looked dead: it may only be
			// paused, or the server may still finish a request whose
			// client is gone, and the object come back. Deleted again at
			// each pass for a while (and found by reconcile after that).
			first, again := q.resolved[token]
			if !again {
				q.log.Info("archive object destroyed", "fs", e.Event.FS, "key", e.Event.Key)
				q.resolved[token] = time.Now()
			}
			if !again || time.Since(first) < lateWriteGrace {
				continue
			}
			delete(q.resolved, token)
			q.store.Delete(token)
			continue
		}
		q.log.Info("archive object destroyed", "fs", e.Event.FS, "key", e.Event.Key)
		q.store.Delete(token)
	}
}

// lockRetry bounds how long a DESTROY of a locked object waits before it
// tries again (a lock may be shortened in GOVERNANCE mode, or not say
// when it ends).
const lockRetry = time.Hour

// lateWriteGrace: how long an upload that another node resolved is
// deleted again in case it lands late.
const lateWriteGrace = time.Minute

// orphaned: the node that prepared the entry cannot finish it any more:
// this node before its restart, or another node that is not alive. (An
// entry of another node that restarted is marked by that node: Adopt.)
func (q *DestroyQueue) orphaned(e *destroyEntry) bool {
	if e.Node == q.self {
		return e.Incarnation != q.incarnation
	}
	return e.Incarnation == orphanMark || !q.alive(e.Node)
}

// orphanMark replaces the incarnation of entries whose node restarted.
const orphanMark = "orphaned"

// Adopt marks the prepared entries that an earlier run of this node left,
// so the owner (which may be another node) resolves them. Every node runs
// it when it mounts the filesystem.
func (q *DestroyQueue) Adopt() {
	all, err := q.store.List()
	if err != nil {
		q.log.Warn("destroy queue unreadable at start; left entries are resolved once the node is seen down", "reason", err)
		return
	}
	for _, raw := range all {
		var e destroyEntry
		if json.Unmarshal(raw, &e) != nil || e.Ready || e.Node != q.self || e.Incarnation == q.incarnation || e.Incarnation == orphanMark {
			continue
		}
		e.Incarnation = orphanMark
		if err := q.write(e); err != nil {
			q.log.Warn("destroy queue: left entry not marked", "token", e.Event.Token, "reason", err)
		}
	}
}

// use is what an entry's file says of its object.
type use int

const (
	unused    use = iota // no file names it: it may go
	inUse                // the file's record names it, or nobody can tell
	rightHeld            // the file's right is held elsewhere: look again later
)

// fileUse looks at the file of an entry (found by its handle, else its
// path) under its storage right, taken shared without waiting: a copy
// commit that holds it (an old owner stopped between its confirm and its
// record write) may be about to name the object, so the entry waits for
// a later pass. When the object is unused, the right stays held until
// unlock, across the delete. When it cannot tell, it says inUse: an
// object kept is found by reconcile, one deleted is data lost.
func (q *DestroyQueue) fileUse(ev *dmapi.Event) (use, func()) {
	none := func() {}
	root, err := beneath.Open(q.root)
	if err != nil {
		return inUse, none
	}
	defer root.Close()
	fd := -1
	if len(ev.Handle) > 0 {
		fd, err = stub.OpenHandle(root.FD(), ev.Handle, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
		if errors.Is(err, unix.ESTALE) {
			return unused, none // the inode is gone: no link of it is left
		}
	}
	if fd < 0 {
		fd, err = root.OpenFD(ev.Path, unix.O_RDONLY|unix.O_NONBLOCK)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, beneath.ErrSymlink) {
				return inUse, none
			}
			return unused, none
		}
	}
	defer unix.Close(fd)
	unlock, err := protect.Take(protect.RightDestroy, func() (func(), error) { return stub.TryLockCommit(fd, true) })
	if errors.Is(err, unix.EAGAIN) {
		return rightHeld, none
	}
	if err != nil {
		return inUse, none
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Nlink == 0 {
		return unused, unlock // removed (still open somewhere)
	}
	rec, err := stub.ReadRecord(fd)
	if err != nil || (rec != nil && rec.Key == ev.Key) {
		unlock()
		return inUse, none
	}
	return unused, unlock
}

func (q *DestroyQueue) read(token string) (destroyEntry, error) {
	var e destroyEntry
	b, err := q.store.Get(token)
	if err == nil {
		err = json.Unmarshal(b, &e)
	}
	return e, err
}

func (q *DestroyQueue) write(e destroyEntry) error {
	b, err := json.Marshal(e)
	if err == nil {
		err = q.store.Put(e.Event.Token, b)
	}
	if err != nil {
		return fmt.Errorf("destroy queue: %w", err)
	}
	return nil
}
