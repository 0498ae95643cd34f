package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// memStore is a Store in memory whose deletes can be made to fail.
type memStore struct {
	mu         sync.Mutex
	m          map[string][]byte
	failDelete bool
}

func (s *memStore) Put(token string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[token] = append([]byte(nil), data...)
	return nil
}
func (s *memStore) Get(token string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.m[token]; ok {
		return b, nil
	}
	return nil, os.ErrNotExist
}
func (s *memStore) Delete(token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failDelete {
		return errors.New("store unavailable")
	}
	delete(s.m, token)
	return nil
}
func (s *memStore) List() (map[string][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range s.m {
		out[k] = v
	}
	return out, nil
}

// destroyed records the objects the queue asked to delete.
type destroyed struct {
	mu   sync.Mutex
	keys []string
}

func (d *destroyed) raise(ctx context.Context, ev *dmapi.Event) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.keys = append(d.keys, ev.Key)
	return nil
}

func (d *destroyed) has(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range d.keys {
		if k == key {
			return true
		}
	}
	return false
}

func newQueue(t *testing.T, store *memStore, root string, gone *destroyed) *DestroyQueue {
	return NewDestroyQueue(store, "t", "n1", root, gone.raise, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// stubFile makes root/rel with a record naming key and returns it open.
func stubFile(t *testing.T, root, rel, key string) *os.File {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if key != "" {
		if err := stub.WriteRecord(int(f.Fd()), &stub.Record{State: stub.Premigrated, Key: key, Size: 4, ChunkSize: stub.DefaultChunkSize, SumsCount: 1, Sums: []uint32{1}}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// A failed abort leaves its entry; a plain `mv a b` then must not make
// the object of the migrated b garbage, in this run (the abort is retried)
// or after a restart (the entry is resolved by the file's handle).
func TestDestroyFailedAbortThenRename(t *testing.T) {
	testenv.RequireRoot(t) // open_by_handle_at
	for _, restart := range []bool{false, true} {
		root := t.TempDir()
		store, gone := &memStore{m: map[string][]byte{}}, &destroyed{}
		q := newQueue(t, store, root, gone)
		f := stubFile(t, root, "a", "t/1/k")
		token, err := q.Prepare(int(f.Fd()), "a", "t/1/k", dmapi.Deleted)
		if err != nil {
			t.Fatal(err)
		}
		store.failDelete = true
		q.Abort(token) // the unlink failed, and so does dropping its entry
		store.failDelete = false
		os.Rename(filepath.Join(root, "a"), filepath.Join(root, "b"))
		if restart {
			q = newQueue(t, store, root, gone) // a new incarnation finds the entry
		}
		q.drain(context.Background())
		if gone.has("t/1/k") {
			t.Fatalf("restart=%v: the object of the renamed stub was deleted", restart)
		}
		if n, _ := store.List(); len(n) != 0 {
			t.Fatalf("restart=%v: entries left: %d", restart, len(n))
		}
	}
}

// An upload of this node's running incarnation is never resolved, however
// old; after a restart its object (no record names it) is garbage.
func TestDestroyLiveUploadNotResolvedByAge(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	store, gone := &memStore{m: map[string][]byte{}}, &destroyed{}
	q := newQueue(t, store, root, gone)
	f := stubFile(t, root, "big", "") // being uploaded: no record yet
	token, err := q.Prepare(int(f.Fd()), "big", "t/2/k", dmapi.Deleted)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := store.Get(token)
	var e destroyEntry
	json.Unmarshal(raw, &e)
	e.Created = time.Now().Add(-48 * time.Hour)
	q.write(e)
	q.drain(context.Background())
	if gone.has("t/2/k") {
		t.Fatal("the object of an upload in progress was deleted for its age")
	}
	newQueue(t, store, root, gone).drain(context.Background())
	if !gone.has("t/2/k") {
		t.Fatal("the object of an upload that a crash interrupted was kept")
	}
}

// A hard link made while a stub is removed keeps the object: the queue
// sees the link's record naming it.
func TestDestroyKeepsObjectOfHardLink(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	store, gone := &memStore{m: map[string][]byte{}}, &destroyed{}
	q := newQueue(t, store, root, gone)
	f := stubFile(t, root, "a", "t/3/k")
	token, _ := q.Prepare(int(f.Fd()), "a", "t/3/k", dmapi.Deleted)
	os.Link(filepath.Join(root, "a"), filepath.Join(root, "c")) // the race: a link after the check
	os.Remove(filepath.Join(root, "a"))
	q.Commit(token)
	q.drain(context.Background())
	if gone.has("t/3/k") {
		t.Fatal("the object of a stub still linked as c was deleted")
	}
	// The last link goes: now it is garbage.
	fc, _ := os.Open(filepath.Join(root, "c"))
	defer fc.Close()
	token, _ = q.Prepare(int(fc.Fd()), "c", "t/3/k", dmapi.Deleted)
	fc.Close()
	os.Remove(filepath.Join(root, "c"))
	q.Commit(token)
	q.drain(context.Background())
	if !gone.has("t/3/k") {
		t.Fatal("the object of a removed stub was kept")
	}
}

// blockingArchive holds every Put until released.
type blockingArchive struct {
	archive.Archive
	started, release chan struct{}
}

func (a *blockingArchive) Put(ctx context.Context, key string, r io.Reader, size int64) (archive.ObjectInfo, error) {
	select {
	case a.started <- struct{}{}:
	default:
	}
	<-a.release
	return a.Archive.Put(ctx, key, r, size)
}

// `rm` during a premigration: the upload is not recorded on the removed
// file, and its object is garbage, not leaked.
func TestRmDuringPremigration(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	arch, err := archive.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ba := &blockingArchive{Archive: arch, started: make(chan struct{}, 1), release: make(chan struct{})}
	store, gone := &memStore{m: map[string][]byte{}}, &destroyed{}
	q := newQueue(t, store, root, gone)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := New(fakes.Root(t, root), ba, &dmapi.Rights{}, fakes.OpenGate{}, q, Config{FS: "t", ReleaseWait: 5 * time.Second}, log)
	os.WriteFile(filepath.Join(root, "f"), bytes.Repeat([]byte("x"), 1<<20), 0o644)
	done := make(chan error, 1)
	go func() { _, err := m.Migrate(context.Background(), "f", 0, true); done <- err }()
	<-ba.started
	os.Remove(filepath.Join(root, "f")) // no record yet: a plain unlink
	close(ba.release)
	if err := <-done; !errors.Is(err, ErrChangedDuringMigration) {
		t.Fatalf("premigration of a removed file: %v, want ErrChangedDuringMigration", err)
	}
	all, _ := store.List()
	if len(all) != 1 {
		t.Fatalf("want the upload's entry ready for deletion, have %d entries", len(all))
	}
	q.drain(context.Background())
	if len(gone.keys) != 1 {
		t.Fatalf("the uploaded object of the removed file was not destroyed: %v", gone.keys)
	}
	var st unix.Stat_t
	if unix.Stat(filepath.Join(root, "f"), &st) == nil {
		t.Fatal("file came back")
	}
}
