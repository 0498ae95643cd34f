package repo

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func newRepo(t *testing.T) *Bolt {
	t.Helper()
	r, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir); !errors.Is(err, ErrNoRepo) {
		t.Fatalf("open of an empty dir: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("create in a missing dir succeeded")
	}
	os.WriteFile(filepath.Join(dir, FileName), []byte("not a database at all, just some text..."), 0o600)
	if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a garbage file: %v", err)
	}
	if _, err := Create(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("create over a garbage file: %v", err)
	}
	// A valid bbolt file of someone else is not ours either.
	other := t.TempDir()
	db, _ := bolt.Open(filepath.Join(other, FileName), 0o600, nil)
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("x")); return err })
	db.Close()
	if _, err := Open(other); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a foreign bbolt file: %v", err)
	}
	// A good one opens, and Create on it again is harmless.
	r := newRepo(t)
	if _, err := Open(r.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(r.String()); err != nil {
		t.Fatal(err)
	}
}

func TestFilesystems(t *testing.T) {
	r := newRepo(t)
	fs := FS{Name: "home", Backing: "/b", Archive: "file:///a", Candidates: []string{"n1", "n2"}, Owner: "n1", Epoch: 1}
	if err := r.AddFS(fs); err != nil {
		t.Fatal(err)
	}
	if err := r.AddFS(fs); !errors.Is(err, ErrExists) {
		t.Fatalf("added twice: %v", err)
	}
	if err := r.AddFS(FS{Name: "../x"}); err == nil {
		t.Fatal("bad name accepted")
	}
	got, err := r.GetFS("home")
	if err != nil || got.Owner != "n1" || !got.IsCandidate("n2") || got.IsCandidate("n3") {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := r.GetFS("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	// A failing update changes nothing.
	if err := r.UpdateFS("home", func(f *FS) error { f.Owner = "n2"; return errors.New("no") }); err == nil {
		t.Fatal("failing update succeeded")
	}
	if got, _ := r.GetFS("home"); got.Owner != "n1" {
		t.Fatalf("failed update left %q", got.Owner)
	}
	// Updates from many openers at once are atomic.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				if err := r.UpdateFS("home", func(f *FS) error { f.Epoch++; return nil }); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if got, _ := r.GetFS("home"); got.Epoch != 201 {
		t.Fatalf("epoch after 200 concurrent increments: %d", got.Epoch)
	}
	r.PutEntry("home", "t1", []byte("x"))
	if err := r.RemoveFS("home"); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.ListFS(); len(l) != 0 {
		t.Fatalf("after remove: %v", l)
	}
	if e, _ := r.ListEntries("home"); len(e) != 0 {
		t.Fatalf("events of a removed filesystem: %v", e)
	}
	if err := r.RemoveFS("home"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove twice: %v", err)
	}
}

func TestLocks(t *testing.T) {
	r := newRepo(t)
	if ok, err := r.TryLock("fs/home", "n1", time.Minute); !ok || err != nil {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if ok, _ := r.TryLock("fs/home", "n2", time.Minute); ok {
		t.Fatal("second holder got a held lock")
	}
	if ok, _ := r.TryLock("fs/home", "n1", time.Minute); !ok {
		t.Fatal("holder could not take its own lock again")
	}
	r.Unlock("fs/home", "n2") // not the holder: no effect
	if ok, _ := r.TryLock("fs/home", "n2", time.Minute); ok {
		t.Fatal("unlock by a non-holder freed the lock")
	}
	time.Sleep(20 * time.Millisecond)
	if ok, _ := r.TryLock("fs/home", "n2", 10*time.Millisecond); !ok {
		t.Fatal("stale lock not taken by force")
	}
	r.Unlock("fs/home", "n2")
	if ok, _ := r.TryLock("fs/home", "n3", time.Minute); !ok {
		t.Fatal("released lock not free")
	}
}

func TestNodesAndEntries(t *testing.T) {
	r := newRepo(t)
	r.PutNode(Node{Name: "n2", RPC: "127.0.0.1:2"})
	r.PutNode(Node{Name: "n1", RPC: "127.0.0.1:1"})
	r.PutNode(Node{Name: "n1", RPC: "127.0.0.1:3"})
	nodes, err := r.ListNodes()
	if err != nil || len(nodes) != 2 || nodes[0].Name != "n1" || nodes[0].RPC != "127.0.0.1:3" {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	q := Entries{Repo: r, FS: "fs1"}
	q.Put("a", []byte("1"))
	q.Put("b", []byte("2"))
	if e, err := q.Get("b"); err != nil || string(e) != "2" {
		t.Fatalf("get entry: %q %v", e, err)
	}
	q.Delete("a")
	if l, _ := q.List(); len(l) != 1 || string(l["b"]) != "2" {
		t.Fatalf("entries: %q", l)
	}
	if _, err := r.GetEntry("fs2", "b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("entry of another fs: %v", err)
	}
}

func TestSettings(t *testing.T) {
	for _, kv := range [][2]string{{"small-file", "16MiB"}, {"window", "4096"}, {"workers", "3"}, {"event-timeout", "90s"}, {"failover", "sync"}, {"recall", "whole"}} {
		if err := CheckSetting(kv[0], kv[1]); err != nil {
			t.Errorf("%s=%s refused: %v", kv[0], kv[1], err)
		}
	}
	for _, kv := range [][2]string{{"small-file", "-1"}, {"small-file", "lots"}, {"workers", "0"}, {"event-timeout", "soon"}, {"failover", "maybe"}, {"colour", "red"}} {
		if err := CheckSetting(kv[0], kv[1]); err == nil {
			t.Errorf("%s=%s accepted", kv[0], kv[1])
		}
	}
	if n, _ := ParseSize("64KiB"); n != 64<<10 {
		t.Fatalf("64KiB = %d", n)
	}
}

// 0 is accepted for every size and duration (each key says what it means);
// negative values and garbage are not.
func TestSettingsAcceptZero(t *testing.T) {
	for _, kv := range [][2]string{{"min-size", "0"}, {"quota", "0"}, {"small-file", "0B"}, {"window", "0"},
		{"max-window", "0KiB"}, {"release-wait", "0s"}, {"event-timeout", "0s"}, {"interval", "0s"}, {"min-age", "0s"}} {
		if err := CheckSetting(kv[0], kv[1]); err != nil {
			t.Errorf("%s=%s refused: %v", kv[0], kv[1], err)
		}
	}
	for _, kv := range [][2]string{{"min-size", "-1"}, {"release-wait", "-1s"}, {"interval", "soon"}, {"quota", "lots"}} {
		if err := CheckSetting(kv[0], kv[1]); err == nil {
			t.Errorf("%s=%s accepted", kv[0], kv[1])
		}
	}
}
