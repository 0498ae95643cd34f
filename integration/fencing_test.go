package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// processStopped: the process is stopped (SIGSTOP), by /proc.
func processStopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'T'
}

// waitStopped waits until n stopped itself at a failpoint; the returned
// function wakes it (once; it is safe to call again, as on cleanup).
func waitStopped(t *testing.T, n *testenv.Node) (resume func()) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !processStopped(n.PID()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never stopped at the failpoint", n.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var once sync.Once
	return func() { once.Do(n.Resume) }
}

// The owner stops (a whole-process pause, as a frozen VM) after its last
// check and before it writes recalled bytes. Its lease lapses, another
// node takes over and serves the reader, and the file is rewritten
// through that node. When the old owner wakes, its old bytes must not
// land over the new ones: the rewrite waits for the right the old owner
// still holds, the old owner's write ends, and it writes nothing more.
func TestFencingPausedRecallWrite(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "small-file=0", "window=256KiB")
	c.Nodes["n1"].Env = []string{"CASCADEFS_FAILPOINTS=" + failpoint.RecallBeforeWrite + "=stop@1"}
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	old := writeRandom(t, n1.M("f"), 4<<20)
	c.MustCLI("migrate", n1.M("f"))
	testenv.DropCaches()

	read := make(chan [32]byte, 1)
	go func() { read <- sumFile(t, n2.M("f")) }() // n1's recall stops itself
	resume := waitStopped(t, n1)
	defer resume()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	select {
	case got := <-read:
		if got != old {
			t.Fatal("the reader on n2 got wrong bytes after the takeover")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the reader on n2 was not served after the takeover")
	}

	// Rewrite through n2 while n1 still holds its right.
	fresh := make([]byte, 4<<20)
	rand.Read(fresh)
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(n2.M("f"), fresh, 0o644) }()
	select {
	case err := <-wrote:
		t.Fatalf("the rewrite did not wait for the right the stopped old owner holds (err %v)", err)
	case <-time.After(2 * time.Second):
	}
	resume()
	finishes(t, wrote, "the rewrite")
	time.Sleep(2 * time.Second) // time for a stale write to land, were it let through
	testenv.DropCaches()
	for _, n := range []*testenv.Node{n1, n2} {
		got, err := os.ReadFile(n.M("f"))
		if err != nil || !bytes.Equal(got, fresh) {
			t.Fatalf("after the old owner woke, %s reads other bytes than the rewrite (err %v)", n.Name, err)
		}
	}
	if l := n1.Log(); !strings.Contains(l, "self-fenced") && !strings.Contains(l, "lease lapsed") && !strings.Contains(l, "replaced:") {
		t.Fatalf("the old owner does not say it stopped:\n%s", l)
	}
	if _, err := os.Stat(filepath.Join(c.Backing, "f")); err != nil {
		t.Fatal(err)
	}
}

// The owner stops after its last check and record write, before its
// punch, holding the file's right. Another node takes over; a change of
// the middle of the file through it waits for the right; the old owner
// wakes and punches; the change must still see the file's own bytes
// around it (recalled again), never the punched zeros.
func TestFencingPausedPunch(t *testing.T) {
	pausedReleaseThenChange(t, failpoint.MigrateBeforePunch)
}

// The owner stops after its release's confirm, its record still
// premigrated, holding the file's right. Another node takes over; a
// change through it must wait for the right before it makes the file
// resident (and deletes the object): the old code let the write through
// at once, and the old owner, woken, recorded the deleted object as the
// file's and punched it (every byte then read EIO).
func TestFencingPausedReleaseAfterConfirm(t *testing.T) {
	pausedReleaseThenChange(t, failpoint.MigrateAfterConfirm)
}

// ownerStoppedInMigrate starts n1 and n2, writes f (4 MiB, returned)
// through n1 and migrates it there; n1 stops itself at point, and n2
// takes the filesystem over. resume wakes n1 (also at cleanup).
func ownerStoppedInMigrate(t *testing.T, point string) (c *testenv.Cluster, orig []byte, resume func()) {
	c = testenv.NewCluster(t, "", nil, "n1", "n2")
	// A short hold-lease: n2's hold for n1's release ends while n1 is
	// stopped, so only the right keeps n2 from the file.
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "release-wait=100ms", "hold-lease=1s")
	c.Nodes["n1"].Env = []string{"CASCADEFS_FAILPOINTS=" + point + "=stop@1"}
	c.Start("n1", "n2")
	orig = make([]byte, 4<<20)
	rand.Read(orig)
	if err := os.WriteFile(c.Nodes["n1"].M("f"), orig, 0o644); err != nil {
		t.Fatal(err)
	}
	go c.CLI("migrate", c.Nodes["n1"].M("f")) // n1 stops inside it
	resume = waitStopped(t, c.Nodes["n1"])
	t.Cleanup(resume)
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	return c, orig, resume
}

func pausedReleaseThenChange(t *testing.T, point string) {
	c, orig, resume := ownerStoppedInMigrate(t, point)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	size := len(orig)
	wrote := make(chan error, 1)
	patch := []byte("written through n2 after the takeover")
	go func() {
		f, err := os.OpenFile(n2.M("f"), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteAt(patch, int64(size/2))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Logf("the change went through before the old owner woke (err %v)", err)
		wrote <- err
	case <-time.After(2 * time.Second):
	}
	resume()
	finishes(t, wrote, "the change")
	time.Sleep(time.Second)
	if os.Getenv("CASCADEFS_SHOW_LOGS") != "" {
		t.Logf("n1:\n%s\nn2:\n%s", n1.Log(), n2.Log())
	}
	want := append([]byte(nil), orig...)
	copy(want[size/2:], patch)
	testenv.DropCaches()
	for _, n := range []*testenv.Node{n1, n2} {
		got, err := os.ReadFile(n.M("f"))
		if err != nil || !bytes.Equal(got, want) {
			zeros := 0
			for i := range got {
				if i < len(want) && got[i] != want[i] {
					zeros++
				}
			}
			t.Fatalf("after the old owner woke, %s reads %d wrong bytes (err %v)", n.Name, zeros, err)
		}
	}
}

// The owner stops (SIGSTOP) inside a write transaction of the bbolt
// repository, holding its file lock: the other node is delayed about a
// second, then kills the stopped holder, and takes the filesystem over
// once its lease lapsed; a reader gets its bytes. Without that the whole
// cluster waited for as long as the owner stayed stopped.
func TestBoltOwnerStoppedHoldingTheRepository(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n2.M("f"), 1<<20)
	c.MustCLI("migrate", n2.M("f"))
	// n1 starts, takes the filesystem by hand, then stops in a later
	// transaction (its lease renewals write every 500 ms).
	n1.Env = []string{"CASCADEFS_FAILPOINTS=" + failpoint.RepoInUpdate + "=stop@12"}
	n1.Start()
	c.MustCLI("failover", testenv.FSName, "--to", "n1")
	if o, _ := fsOwner(t, c, testenv.FSName); o != "n1" {
		t.Fatalf("owner %s, want n1 before it stops", o)
	}
	resume := waitStopped(t, n1)
	defer resume()
	stopped := time.Now()
	owner, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	t.Logf("%s took over %v after n1 stopped holding the repository", owner, time.Since(stopped).Round(10*time.Millisecond))
	if n1.Running() {
		t.Fatal("the stopped holder of the repository was not killed")
	}
	testenv.DropCaches()
	if sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes after the takeover")
	}
}

// finishes waits for a change that waited for a stopped old owner to end
// without error once the owner is resumed.
func finishes(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s never finished after the old owner woke", what)
	}
}

// The owner's whole process stops past its lease while an admin's
// migration waits between its upload and its commit; nobody else can
// take the filesystem (one node). When the process wakes, it renews its
// lease and serves at a new epoch, and the migration that the old
// session started commits nothing: the file stays resident, its bytes
// right. Before, the session came back at the same epoch and the old
// call's commit went through.
func TestLapseMeansANewEpochAndNothingOld(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1")
	dir := t.TempDir()
	n1 := c.Nodes["n1"]
	n1.Env = []string{"CASCADEFS_FAILPOINTS=" + failpoint.MigrateAfterUpload + "=pause@1", "CASCADEFS_FAILPOINT_DIR=" + dir}
	c.Start("n1")
	want := writeRandom(t, n1.M("f"), 2<<20)
	_, e0 := fsOwner(t, c, testenv.FSName)
	done := make(chan cliResult, 1)
	go func() { o, e, err := c.CLI("migrate", n1.M("f")); done <- cliResult{err, o + e} }()
	marker := filepath.Join(dir, failpoint.MigrateAfterUpload+".paused")
	waitForFile(t, marker)

	if err := syscall.Kill(n1.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the lease is 2 s
	n1.Resume()
	testenv.WaitFor(t, "a new epoch after the lapse", 20*time.Second, func() bool {
		_, e := fsOwner(t, c, testenv.FSName)
		return e > e0
	})
	testenv.WaitFor(t, "the session at the new epoch", 20*time.Second, func() bool {
		return strings.Count(n1.Log(), `msg="DM session started"`) >= 2
	})
	os.Remove(marker)
	r := <-done
	if r.err == nil {
		t.Fatalf("the migration started before the lapse committed after it:\n%s", r.out)
	}
	if s := clusterState(t, c, n1, "f"); s != "resident" {
		t.Fatalf("state %s after the old session's migration, want resident", s)
	}
	testenv.DropCaches()
	if sumFile(t, n1.M("f")) != want {
		t.Fatal("wrong bytes after the lapse")
	}
}

// The owner stops inside its copy commit, after its confirm and before
// its premigrated record is written, holding the file's right. Another
// node takes over, and its DESTROY queue finds the upload's entry, whose
// node looks dead. It must not delete the object while the file's right
// is held: the old owner, woken, writes the record naming it. Before,
// the object was deleted and the record named a missing object (the
// next release failed: "object not found").
func TestFencingPausedCopyCommit(t *testing.T) {
	c, orig, resume := ownerStoppedInMigrate(t, failpoint.MigrateBeforeRecord)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := sha256.Sum256(orig)
	// n2's queue looks at the upload's entry every 2 s, once gossip
	// calls n1 failed.
	time.Sleep(10 * time.Second)
	resume()
	time.Sleep(2 * time.Second)
	if o, e, err := c.CLI("migrate", n2.M("f")); err != nil {
		t.Fatalf("migrate after the old owner's late record: %v\n%s%s\nn2:\n%s", err, o, e, n2.Log())
	}
	if s := clusterState(t, c, n2, "f"); s != "migrated" {
		t.Fatalf("state %s, want migrated", s)
	}
	testenv.DropCaches()
	for _, n := range []*testenv.Node{n1, n2} {
		if sumFile(t, n.M("f")) != want {
			t.Fatalf("wrong bytes through %s", n.Name)
		}
	}
}

// A writer must not wait forever for a file's right that a stopped old
// owner holds: on one host, a holder of this program stopped for twice
// its lease is killed by the waiter, as a crash would end it, and the
// write goes through. Before, the rewrite waited for as long as the old
// owner stayed stopped.
func TestWriterEndsAStoppedRightHolder(t *testing.T) {
	c, _, _ := ownerStoppedInMigrate(t, failpoint.MigrateAfterConfirm)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	fresh := make([]byte, 2<<20)
	rand.Read(fresh)
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(n2.M("f"), fresh, 0o644) }()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("the rewrite: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the rewrite still waits for the right of the stopped old owner after 30 s")
	}
	if !n1.Exited(5 * time.Second) {
		t.Fatal("the stopped old owner still runs")
	}
	if !strings.Contains(n2.Log(), "holding a file's right was stopped; killed it") {
		t.Fatalf("n2 does not say it killed the stopped holder:\n%s", n2.Log())
	}
	testenv.DropCaches()
	if got, err := os.ReadFile(n2.M("f")); err != nil || !bytes.Equal(got, fresh) {
		t.Fatalf("after the rewrite: %v", err)
	}
}

// A node's first look at the repository may take long: here a filesystem
// whose archive accepts connections and never answers keeps its session
// from starting for 15 s. Renewals run from the start, so the lease does
// not lapse meanwhile. Before, they began only after that first look: the
// node's lease lapsed at every start.
func TestSlowStartKeepsTheLease(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	c := testenv.NewCluster(t, "", []string{"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y"}, "n1")
	slow := filepath.Join(c.Dir, "private", "slow")
	if err := os.MkdirAll(slow, 0o755); err != nil {
		t.Fatal(err)
	}
	c.MustCLI("fs", "add", "--repo", c.Repo, "slow", "--backing", slow, "--archive", "s3://bucket?endpoint="+ln.Addr().String()+"&insecure=true")
	start := time.Now()
	c.Start("n1")
	n1 := c.Nodes["n1"]
	if took := time.Since(start); took < 10*time.Second {
		t.Logf("the first look took only %v", took)
	}
	for _, bad := range []string{"lease lapsed", "renewed after a lapse", "self-fenced"} {
		if strings.Contains(n1.Log(), bad) {
			t.Fatalf("the lease lapsed during a slow start (%q):\n%s", bad, n1.Log())
		}
	}
}
