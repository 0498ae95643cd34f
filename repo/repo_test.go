package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	holderpkg "github.com/cascadefs/cascadefs/internal/holder"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func newRepo(t *testing.T) *Bolt {
	t.Helper()
	r, err := Create(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir, nil); !errors.Is(err, ErrNoRepo) {
		t.Fatalf("open of an empty dir: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "missing"), nil); err == nil {
		t.Fatal("create in a missing dir succeeded")
	}
	os.WriteFile(filepath.Join(dir, FileName), []byte("not a database at all, just some text..."), 0o600)
	if _, err := Open(dir, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a garbage file: %v", err)
	}
	if _, err := Create(dir, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("create over a garbage file: %v", err)
	}
	// A valid bbolt file of someone else is not ours either.
	other := t.TempDir()
	db, _ := bolt.Open(filepath.Join(other, FileName), 0o600, nil)
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("x")); return err })
	db.Close()
	if _, err := Open(other, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a foreign bbolt file: %v", err)
	}
	// A good one opens, and Create on it again is harmless.
	r := newRepo(t)
	if _, err := Open(r.String(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(r.String(), nil); err != nil {
		t.Fatal(err)
	}
}

// eachEngine runs test against a fresh repository of each engine, as
// one suite: what the rest of cascadefs relies on must hold for both.
func eachEngine(t *testing.T, test func(t *testing.T, r Repository)) {
	t.Run("bolt", func(t *testing.T) { test(t, newRepo(t)) })
	t.Run("etcd", func(t *testing.T) {
		r, err := OpenEtcd(testenv.StartEtcd(t, 1).URL())
		if err != nil {
			t.Fatal(err)
		}
		test(t, r)
	})
}

func TestFilesystems(t *testing.T) { eachEngine(t, testFilesystems) }

func testFilesystems(t *testing.T, r Repository) {
	fs := FS{Name: "home", Backing: "/b", Archive: "file:///a", Candidates: []string{"n1", "n2"}, Owner: "n1", Epoch: 1}
	if err := r.AddFS(ctx, fs); err != nil {
		t.Fatal(err)
	}
	if err := r.AddFS(ctx, fs); !errors.Is(err, ErrExists) {
		t.Fatalf("added twice: %v", err)
	}
	if err := r.AddFS(ctx, FS{Name: "../x"}); err == nil {
		t.Fatal("bad name accepted")
	}
	got, err := r.GetFS(ctx, "home")
	if err != nil || got.Owner != "n1" || !got.IsCandidate("n2") || got.IsCandidate("n3") {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := r.GetFS(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	// A failing update changes nothing.
	if err := r.UpdateFS(ctx, "home", func(f *FS) error { f.Owner = "n2"; return errors.New("no") }); err == nil {
		t.Fatal("failing update succeeded")
	}
	if got, _ := r.GetFS(ctx, "home"); got.Owner != "n1" {
		t.Fatalf("failed update left %q", got.Owner)
	}
	// Updates from many openers at once are atomic.
	before, _ := r.GetFS(ctx, "home")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				if err := r.UpdateFS(ctx, "home", func(f *FS) error {
					f.Settings = map[string]string{"n": strconv.Itoa(len(f.Candidates) + 1)}
					f.Candidates = append(f.Candidates, "x")
					return nil
				}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if got, _ := r.GetFS(ctx, "home"); len(got.Candidates) != len(before.Candidates)+200 || got.Settings["n"] != strconv.Itoa(len(got.Candidates)) {
		t.Fatalf("after 200 concurrent appends: %d candidates, n=%s", len(got.Candidates), got.Settings["n"])
	}
	r.PutEntry(ctx, "home", "t1", []byte("x"))
	if err := r.RemoveFS(ctx, "home"); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.ListFS(ctx); len(l) != 0 {
		t.Fatalf("after remove: %v", l)
	}
	if e, _ := r.ListEntries(ctx, "home"); len(e) != 0 {
		t.Fatalf("events of a removed filesystem: %v", e)
	}
	if err := r.RemoveFS(ctx, "home"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove twice: %v", err)
	}
}

func TestOwnershipBolt(t *testing.T) {
	dir := t.TempDir()
	owner, err := Create(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(dir, nil) // another node: a judge of leases of its own
	if err != nil {
		t.Fatal(err)
	}
	testOwnership(t, owner, other, 300*time.Millisecond)
}

// The same rules on a real etcd cluster of three members; leases lapse
// at the servers (etcd grants whole seconds).
func TestOwnershipEtcd(t *testing.T) {
	cluster := testenv.StartEtcd(t, 3)
	owner, err := OpenEtcd(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	other, err := OpenEtcd(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	testOwnership(t, owner, other, 2*time.Second)
}

// testOwnership runs the ownership rules against an engine: r is the
// owner's handle, other another node's.
func testOwnership(t *testing.T, r, other Repository, ttl time.Duration) {
	if err := r.AddFS(ctx, FS{Name: "home", Backing: "/b", Archive: "file:///a"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Renew(ctx, "n1", ttl); err != nil {
		t.Fatal(err)
	}
	fs, err := r.Claim(ctx, "home", "n1", "", "had no owner")
	if err != nil || fs.Owner != "n1" || fs.Epoch != 1 {
		t.Fatalf("claim of an unowned filesystem: %+v %v", fs, err)
	}
	if _, err := other.Claim(ctx, "home", "n2", "", "had no owner"); !errors.Is(err, ErrOwnerChanged) {
		t.Fatalf("second claim of an unowned filesystem: %v", err)
	}
	if err := other.Confirm(ctx, "home", "n1", 1); err != nil {
		t.Fatalf("confirm of the owner: %v", err)
	}
	// A live lease is never taken: n1 renews faster than its TTL.
	deadline := time.Now().Add(3 * ttl)
	var renewed time.Time
	for time.Now().Before(deadline) {
		if err := r.Renew(ctx, "n1", ttl); err != nil {
			t.Fatal(err)
		}
		renewed = time.Now()
		if _, err := other.Claim(ctx, "home", "n2", "n1", "n1 failed"); !errors.Is(err, ErrLeaseLive) {
			t.Fatalf("claim from a live owner: %v", err)
		}
		time.Sleep(ttl / 4)
	}
	// Configuration changes never move the owner.
	if err := other.UpdateFS(ctx, "home", func(f *FS) error { f.Owner, f.Epoch = "n2", 9; f.Archive = "file:///b"; return nil }); err != nil {
		t.Fatal(err)
	}
	if fs, _ := r.GetFS(ctx, "home"); fs.Owner != "n1" || fs.Epoch != 1 || fs.Archive != "file:///b" {
		t.Fatalf("UpdateFS moved the owner or lost the change: %+v", fs)
	}
	// n1 stops renewing: after its TTL, by the other's clock, it is taken.
	start := time.Now()
	for {
		fs, err = other.Claim(ctx, "home", "n2", "n1", "n1 failed")
		if err == nil {
			break
		}
		if !errors.Is(err, ErrLeaseLive) {
			t.Fatal(err)
		}
		if time.Since(start) > 10*ttl {
			t.Fatal("a lapsed lease was never taken over")
		}
		time.Sleep(ttl / 10)
	}
	if waited := time.Since(renewed); waited < ttl {
		t.Fatalf("taken over %v after the last renewal, before the TTL of %v", waited, ttl)
	}
	if fs.Owner != "n2" || fs.Epoch != 2 {
		t.Fatalf("after the takeover: %+v", fs)
	}
	if err := r.Confirm(ctx, "home", "n1", 1); !errors.Is(err, ErrOwnerChanged) {
		t.Fatalf("the old owner confirmed: %v", err)
	}
	if _, err := r.Move(ctx, "home", "n1", 1, "", "stopping"); !errors.Is(err, ErrOwnerChanged) {
		t.Fatalf("the old owner moved it: %v", err)
	}
	// Handed over by its owner: no owner, same epoch; the next claim
	// needs no lapse.
	if fs, err = other.Move(ctx, "home", "n2", 2, "", "n2 is stopping"); err != nil || fs.Owner != "" || fs.Epoch != 2 {
		t.Fatalf("handover: %+v %v", fs, err)
	}
	if fs, err = r.Claim(ctx, "home", "n1", "", "had no owner"); err != nil || fs.Epoch != 3 {
		t.Fatalf("claim after a handover: %+v %v", fs, err)
	}
	if fs, err = r.Move(ctx, "home", "n1", 3, "n2", "by hand"); err != nil || fs.Owner != "n2" || fs.Epoch != 4 {
		t.Fatalf("move to a node: %+v %v", fs, err)
	}
	if len(fs.Takeovers) != 5 {
		t.Fatalf("history: %+v", fs.Takeovers)
	}
	// The history stays capped however often the owner moves.
	for i := 0; i < 2*keepTakeovers; i++ {
		fs, err = other.Move(ctx, "home", fs.Owner, fs.Epoch, "n2", "again")
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(fs.Takeovers) != keepTakeovers {
		t.Fatalf("history grew to %d", len(fs.Takeovers))
	}
	// A dropped lease is not live: its filesystems go at once.
	r.Renew(ctx, "n3", time.Hour)
	r.DropLease(ctx, "n3")
	leases, err := other.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Node == "n3" {
			t.Fatalf("dropped lease listed: %+v", l)
		}
	}
}

// A lease is never mistaken for another: a node's process that stops
// cleanly (its lease dropped) and one started again under the same name
// that renews are two leases. An observer that last saw the first for
// longer than its TTL must judge the second live: before the lease kept
// a holder and its term went on counting, the restarted process renewed
// at term 1 again and the observer, which had seen term 1 long before,
// took the filesystem right after that renewal.
func TestLeaseIdentityBolt(t *testing.T) {
	dir := t.TempDir()
	if _, err := Create(dir, nil); err != nil {
		t.Fatal(err)
	}
	open := func() Repository {
		r, err := Open(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	testLeaseIdentity(t, open, 300*time.Millisecond)
}

func TestLeaseIdentityEtcd(t *testing.T) {
	cluster := testenv.StartEtcd(t, 1)
	open := func() Repository {
		r, err := OpenEtcd(cluster.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	testLeaseIdentity(t, open, 2*time.Second)
}

func testLeaseIdentity(t *testing.T, open func() Repository, ttl time.Duration) {
	first, observer := open(), open()
	if err := first.AddFS(ctx, FS{Name: "home", Backing: "/b", Archive: "file:///a"}); err != nil {
		t.Fatal(err)
	}
	if err := first.Renew(ctx, "n1", ttl); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Claim(ctx, "home", "n1", "", "had no owner"); err != nil {
		t.Fatal(err)
	}
	if _, err := observer.Claim(ctx, "home", "n2", "n1", "n1 failed"); !errors.Is(err, ErrLeaseLive) {
		t.Fatalf("claim from a live owner: %v", err)
	}
	time.Sleep(ttl + ttl/2)
	if err := first.DropLease(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	again := open() // n1 started again
	for range 2 {
		if err := again.Renew(ctx, "n1", ttl); err != nil {
			t.Fatal(err)
		}
		if _, err := observer.Claim(ctx, "home", "n2", "n1", "n1 failed"); !errors.Is(err, ErrLeaseLive) {
			t.Fatalf("claim right after the restarted owner renewed: %v", err)
		}
	}
}

func TestNodesAndEntries(t *testing.T) { eachEngine(t, testNodesAndEntries) }

func testNodesAndEntries(t *testing.T, r Repository) {
	r.PutNode(ctx, Node{Name: "n2", RPC: "127.0.0.1:2"})
	r.PutNode(ctx, Node{Name: "n1", RPC: "127.0.0.1:1"})
	r.PutNode(ctx, Node{Name: "n1", RPC: "127.0.0.1:3"})
	nodes, err := r.ListNodes(ctx)
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
	if _, err := r.GetEntry(ctx, "fs2", "b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("entry of another fs: %v", err)
	}
}

// A process of this program that stops while it holds the repository's
// lock (SIGSTOP inside a transaction) delays the others by about a
// second, then is killed; without that it would wedge them for as long
// as it stays stopped.
func TestStoppedHolderIsKilled(t *testing.T) {
	if os.Getenv("CASCADEFS_TEST_HOLD_REPO") != "" {
		return // inside the helper process
	}
	dir := t.TempDir()
	r, err := Create(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command(os.Args[0], "-test.run=^TestHoldRepoHelper$", "-test.v")
	holder.Env = append(os.Environ(), "CASCADEFS_TEST_HOLD_REPO="+dir)
	var out bytes.Buffer
	holder.Stdout, holder.Stderr = &out, &out
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Process.Kill()
	exited := make(chan error, 1)
	go func() { exited <- holder.Wait() }()
	// Wait until it is stopped holding the lock.
	deadline := time.Now().Add(30 * time.Second)
	for holderpkg.StoppedFlockHolder(filepath.Join(dir, FileName)) != holder.Process.Pid {
		select {
		case err := <-exited:
			t.Fatalf("the helper exited (%v) before it stopped holding the lock:\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			locks, _ := os.ReadFile("/proc/locks")
			stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", holder.Process.Pid))
			t.Fatalf("the helper never stopped holding the lock; its stat: %s\n/proc/locks:\n%s", stat, locks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if err := r.PutNode(ctx, Node{Name: "n2"}); err != nil {
		t.Fatalf("repository wedged by a stopped holder: %v", err)
	}
	t.Logf("waited %v for the stopped holder", time.Since(start))
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the stopped holder was not killed")
	}
}

// TestHoldRepoHelper, run by TestStoppedHolderIsKilled in a child
// process, stops itself inside a write transaction.
func TestHoldRepoHelper(t *testing.T) {
	dir := os.Getenv("CASCADEFS_TEST_HOLD_REPO")
	if dir == "" {
		return // only does something as the helper of the test above
	}
	r, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.update(ctx, func(*bolt.Tx) error {
		syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		return nil
	})
}

// The etcd engine across machines: TLS with a client certificate and a
// user with a password (from a file), all from the environment. The
// ownership rules hold over it, and each wrong or missing piece gets a
// sentence that names it.
func TestEtcdTLSAndPassword(t *testing.T) {
	secure := testenv.StartSecureEtcd(t)
	setEnv := func(env []string) {
		for _, kv := range secure.Env() { // clear them all first
			t.Setenv(strings.SplitN(kv, "=", 2)[0], "")
		}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
	}
	setEnv(secure.Env())
	owner, err := OpenEtcd(secure.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	other, err := OpenEtcd(secure.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	testOwnership(t, owner, other, 2*time.Second)

	without := func(keys ...string) []string {
		var env []string
		for _, kv := range secure.Env() {
			if !slices.Contains(keys, strings.SplitN(kv, "=", 2)[0]) {
				env = append(env, kv)
			}
		}
		return env
	}
	wrongPass := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrongPass, []byte("not-the-password\n"), 0o600)
	otherCA := t.TempDir()
	testenv.WriteTestCA(t, otherCA)
	for _, c := range []struct {
		name string
		env  []string
		want string
	}{
		{"no TLS", without("CASCADEFS_ETCD_CA", "CASCADEFS_ETCD_CERT", "CASCADEFS_ETCD_KEY"), "CASCADEFS_ETCD_CA"},
		{"no client certificate", without("CASCADEFS_ETCD_CERT", "CASCADEFS_ETCD_KEY"), "certificate"},
		{"wrong CA", append(without("CASCADEFS_ETCD_CA"), "CASCADEFS_ETCD_CA="+filepath.Join(otherCA, "ca.pem")), "certificate"},
		{"wrong password", append(without("CASCADEFS_ETCD_PASSWORD_FILE"), "CASCADEFS_ETCD_PASSWORD_FILE="+wrongPass), "password"},
		{"no user", without("CASCADEFS_ETCD_USER", "CASCADEFS_ETCD_PASSWORD_FILE"), "user"},
		{"TLS to a plain etcd", secure.Env(), "does not speak TLS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			setEnv(c.env)
			url := secure.URL()
			if c.want == "does not speak TLS" {
				url = testenv.StartEtcd(t, 1).URL()
			}
			start := time.Now()
			r, err := OpenEtcd(url)
			if err == nil {
				// Without a user the certificate's name is the user: it
				// connects, but may read nothing.
				_, err = r.ListFS(ctx)
				r.Close()
			}
			t.Logf("%s after %s: %v", c.name, time.Since(start).Round(time.Millisecond), err)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error naming %q, got %v", c.want, err)
			}
		})
	}
}

// The etcd password file and client key follow the rule of every secret
// file (internal/secret): refused with a sentence before any connection.
func TestEtcdSecretFilesRefused(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "password")
	os.WriteFile(pass, []byte("pw\n"), 0o644)
	os.Chmod(pass, 0o644)
	t.Setenv("CASCADEFS_ETCD_USER", "root")
	t.Setenv("CASCADEFS_ETCD_PASSWORD_FILE", pass)
	if _, err := OpenEtcd("etcd://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("open password file: %v", err)
	}
	os.Chmod(pass, 0o600)
	testenv.WriteTestCA(t, dir)
	key := filepath.Join(dir, "client.key")
	os.WriteFile(key, []byte("not a key"), 0o640)
	os.Chmod(key, 0o640)
	t.Setenv("CASCADEFS_ETCD_CA", filepath.Join(dir, "ca.pem"))
	t.Setenv("CASCADEFS_ETCD_CERT", filepath.Join(dir, "ca.pem"))
	t.Setenv("CASCADEFS_ETCD_KEY", key)
	if _, err := OpenEtcd("etcd://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "etcd client key") ||
		!strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("open client key: %v", err)
	}
}

// ctx is the context of the tests' repository calls.
var ctx = context.Background()
