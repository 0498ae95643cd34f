package integration

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/repo"
)

// fsOwner returns the owner and epoch of a filesystem from the repository.
func fsOwner(t testing.TB, c *testenv.Cluster, name string) (string, uint64) {
	t.Helper()
	var list []struct {
		Name  string
		Owner string
		Epoch uint64
	}
	json.Unmarshal([]byte(c.MustCLI("fs", "list", "--repo", c.Repo, "--json")), &list)
	for _, f := range list {
		if f.Name == name {
			return f.Owner, f.Epoch
		}
	}
	t.Fatalf("filesystem %s not in the repository", name)
	return "", 0
}

// waitOwner waits until the filesystem's owner satisfies ok.
func waitOwner(t *testing.T, c *testenv.Cluster, name string, ok func(owner string) bool) (string, uint64) {
	t.Helper()
	var owner string
	var epoch uint64
	testenv.WaitFor(t, "a new owner of "+name, 60*time.Second, func() bool {
		owner, epoch = fsOwner(t, c, name)
		return ok(owner)
	})
	return owner, epoch
}

// The owner is killed while readers on the two other nodes wait on recalls
// of different files: another node takes the filesystem over and every
// reader gets its bytes.
func TestFailoverReleasesWaitingReaders(t *testing.T) {
	m := testenv.StartMinIO(t)
	c := testenv.NewCluster(t, m.Bucket(t, "hsm"), m.EnvList(), "n1", "n2", "n3")
	c.Start("n1", "n2", "n3")
	n1, n2, n3 := c.Nodes["n1"], c.Nodes["n2"], c.Nodes["n3"]
	const files = 50
	want := map[string][32]byte{}
	var names []string
	for i := range files {
		name := fmt.Sprintf("f%02d", i)
		want[name] = writeRandom(t, n1.M(name), 1<<20+int64(i))
		names = append(names, n1.M(name))
	}
	c.MustCLI(append([]string{"migrate", "-j", "8"}, names...)...)
	testenv.DropCaches()

	m.Pause() // recalls hang on the owner
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	type result struct {
		name string
		sum  [32]byte
		err  error
	}
	results := make(chan result, files)
	var wg sync.WaitGroup
	for i := range files {
		name := fmt.Sprintf("f%02d", i)
		reader := n2
		if i%2 == 1 {
			reader = n3
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := os.ReadFile(reader.M(name))
			results <- result{name, sha256.Sum256(b), err}
		}()
	}
	time.Sleep(time.Second) // the readers' events wait at n1
	_, e0 := fsOwner(t, c, testenv.FSName)
	n1.Kill9()
	m.Resume()
	resumed = true
	owner, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil || r.sum != want[r.name] {
			t.Errorf("reader of %s after the failover: err %v, right bytes %v", r.name, r.err, r.sum == want[r.name])
		}
	}
	if epoch != e0+1 {
		t.Fatalf("epoch after one takeover: %d, want %d", epoch, e0+1)
	}
	taker := c.Nodes[owner]
	if !strings.Contains(taker.Log(), "took over filesystem") {
		t.Fatalf("%s owns the filesystem but did not log the takeover", owner)
	}
	// The other survivor raced too, found the owner changed and dropped its attempt.
	loser := n2
	if owner == "n2" {
		loser = n3
	}
	if l := loser.Log(); !strings.Contains(l, "already taken") && !strings.Contains(l, "owner changed meanwhile") &&
		!strings.Contains(l, "nothing left to take") {
		t.Fatalf("%s did not drop its late attempt:\n%s", loser.Name, l)
	}
	// (status also reports n1's dead mount, and so exits 1)
	if out, _, _ := c.CLI("status"); !strings.Contains(out, fmt.Sprintf("n1 -> %s (epoch %d): ", owner, e0+1)) {
		t.Fatalf("status does not show the takeover:\n%s", out)
	}
}

// A graceful stop hands the filesystem over at once (no failure detection).
func TestFailoverGracefulHandover(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	want := writeRandom(t, c.Nodes["n1"].M("a"), 1<<20)
	c.MustCLI("migrate", c.Nodes["n1"].M("a"))
	_, e0 := fsOwner(t, c, testenv.FSName)
	c.Nodes["n1"].Stop()
	owner, epoch := fsOwner(t, c, testenv.FSName)
	if owner != "n2" || epoch != e0+1 {
		t.Fatalf("right after n1 stopped: owner %q epoch %d, want n2 at %d", owner, epoch, e0+1)
	}
	if !strings.Contains(c.Nodes["n2"].Log(), "took filesystem") {
		t.Fatal("n2 did not take the handed-over filesystem")
	}
	testenv.DropCaches()
	if sumFile(t, c.Nodes["n2"].M("a")) != want {
		t.Fatal("wrong bytes after the handover")
	}
}

// No false alarm: an owner paused for 300 ms, and both cores saturated by
// other work for 20 s, cause no takeover.
func TestFailoverNoFalseAlarm(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.Start("n1", "n2", "n3")
	n1 := c.Nodes["n1"]
	_, e0 := fsOwner(t, c, testenv.FSName)
	for range 3 {
		n1.Pause()
		time.Sleep(300 * time.Millisecond)
		n1.Resume()
		time.Sleep(time.Second)
	}
	saturateCPUs(20 * time.Second)
	time.Sleep(2 * time.Second)
	if owner, epoch := fsOwner(t, c, testenv.FSName); owner != "n1" || epoch != e0 {
		t.Fatalf("false alarm: owner %q at epoch %d (was %d)", owner, epoch, e0)
	}
}

// Cascade: a node that can serve only one more filesystem takes at most
// one of the failed node's two; the next candidate takes the other.
func TestFailoverCascades(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	fs2Backing := c.Dir + "/backing2"
	os.MkdirAll(fs2Backing, 0o755)
	c.MustCLI("fs", "add", "--repo", c.Repo, "fs2", "--backing", fs2Backing, "--archive", "file://"+c.Dir+"/archive2",
		"--candidates", "n1,n2,n3", "--owner", "n1")
	c.Nodes["n2"].Args = []string{"--max-filesystems", "1"}
	c.Start("n1", "n2", "n3")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("a"), 2<<20)
	c.MustCLI("migrate", n1.M("a"))

	n1.Kill9()
	o1, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	o2, _ := waitOwner(t, c, "fs2", func(o string) bool { return o == "n2" || o == "n3" })
	if o1 == "n2" && o2 == "n2" {
		t.Fatal("n2 took two filesystems with --max-filesystems 1")
	}
	testenv.DropCaches()
	if sumFile(t, n2.M("a")) != want {
		t.Fatal("wrong bytes after the failover")
	}
}

// Two failures in a row: the filesystem moves twice and still serves.
func TestFailoverTwiceInARow(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.Start("n1", "n2", "n3")
	want := writeRandom(t, c.Nodes["n1"].M("a"), 2<<20)
	c.MustCLI("migrate", c.Nodes["n1"].M("a"))
	_, e0 := fsOwner(t, c, testenv.FSName)
	c.Nodes["n1"].Kill9()
	o1, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	survivor := c.Nodes["n2"]
	if o1 == "n2" {
		survivor = c.Nodes["n3"]
	}
	testenv.DropCaches()
	if sumFile(t, c.Nodes[o1].M("a")) != want {
		t.Fatal("wrong bytes after the first failover")
	}
	c.MustCLI("migrate", survivor.M("a"))
	c.Nodes[o1].Kill9()
	_, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == survivor.Name })
	if epoch != e0+2 {
		t.Fatalf("epoch after two takeovers: %d, want %d", epoch, e0+2)
	}
	testenv.DropCaches()
	if sumFile(t, survivor.M("a")) != want {
		t.Fatal("wrong bytes after the second failover")
	}
}

// An owner that is cut off (paused) in the middle of a migration and comes
// back after a takeover is fenced: it commits nothing, and its upload's
// object is deleted by the new owner.
func TestFailoverFencesOldOwner(t *testing.T) {
	m := testenv.StartMinIO(t)
	c := testenv.NewCluster(t, m.Bucket(t, "hsm"), m.EnvList(), "n1", "n2", "n3")
	c.Start("n1", "n2", "n3")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("f"), 8<<20)

	m.Pause() // the upload hangs, so n1 is caught in the middle of it
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	migrated := make(chan error, 1)
	go func() { _, _, err := c.CLI("migrate", n1.M("f")); migrated <- err }()
	time.Sleep(500 * time.Millisecond)
	n1.Pause()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	n1.Resume()
	m.Resume()
	resumed = true
	select {
	case err := <-migrated:
		if err == nil {
			t.Fatal("the migration of a replaced owner succeeded")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the migration of a replaced owner never ended")
	}
	if s := clusterState(t, c, n2, "f"); s != "resident" {
		t.Fatalf("a replaced owner committed: the file is %s", s)
	}
	if l := n1.Log(); !strings.Contains(l, "fenced") && !strings.Contains(l, "replaced:") {
		t.Fatal("the replaced owner did not log that it was fenced or replaced")
	}
	if sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes")
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(c.ArchiveObjects()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the fenced upload's object was not deleted: %v", c.ArchiveObjects())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A takeover waits for the owner's lease to lapse, not only for gossip to
// call the owner failed (about a second here): killed just after a
// renewal, n1 keeps its filesystem for most of a TTL.
func TestFailoverWaitsForTheLease(t *testing.T) {
	const ttl = 4 * time.Second
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	for _, n := range c.Nodes {
		n.Args = []string{"--lease", ttl.String()}
	}
	c.Start("n1", "n2")
	// Renewals come every TTL/4: the last one was at most 1 s before.
	killed := time.Now()
	c.Nodes["n1"].Kill9()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	if waited := time.Since(killed); waited < ttl*3/4 {
		t.Fatalf("taken over %v after the kill, before the lease (%v) could lapse", waited, ttl)
	}
}

// The owner's backing directory disappears: its watchdog gives the
// filesystem up (active failover); with no eligible node it stays without
// owner and readers wait; once the directory is back, a node takes it and
// the waiting reader gets its bytes.
func TestFailoverActiveWhenBackingDisappears(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("a"), 1<<20)
	c.MustCLI("migrate", n1.M("a"))
	testenv.DropCaches()

	// A reader on n2 has the stub open already.
	f, err := os.Open(n2.M("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The shared disk goes away (for every node here: they share one host).
	hidden := c.Backing + ".away"
	if err := os.Rename(c.Backing, hidden); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			os.Rename(hidden, c.Backing)
		}
	}()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "" })
	if !strings.Contains(n1.Log(), "active failover") {
		t.Fatal("n1 did not say it gave the filesystem up")
	}
	out, _, _ := c.CLI("status")
	if !strings.Contains(out, "no owner") {
		t.Fatalf("status does not say the filesystem has no owner:\n%s", out)
	}
	// Its read waits: nobody serves the filesystem...
	done := make(chan [32]byte, 1)
	go func() {
		b, _ := io.ReadAll(f)
		done <- sha256.Sum256(b)
	}()
	time.Sleep(time.Second)
	select {
	case <-done:
		t.Fatal("a read of a stub finished while no node served the filesystem")
	default:
	}
	if err := os.Rename(hidden, c.Backing); err != nil {
		t.Fatal(err)
	}
	restored = true
	// ...and gets its bytes once a node serves the filesystem again.
	owner, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o != "" })
	select {
	case sum := <-done:
		if sum != want {
			t.Fatal("wrong bytes after the filesystem came back")
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("reader still waiting 60s after %s took the filesystem", owner)
	}
}

// cascadefs failover NAME --to NODE moves a filesystem by hand; a node
// that is not a candidate, or an unknown filesystem, is refused.
func TestFailoverByHand(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "candidates=n1,n2")
	c.Start("n1", "n2") // n3 is no candidate any more: it would mount nothing
	want := writeRandom(t, c.Nodes["n1"].M("a"), 1<<20)
	c.MustCLI("migrate", c.Nodes["n1"].M("a"))
	_, e0 := fsOwner(t, c, testenv.FSName)
	for _, args := range [][]string{{"failover", testenv.FSName, "--to", "n3"}, {"failover", "nope", "--to", "n2"}, {"failover", testenv.FSName}} {
		if _, e, err := c.CLI(args...); err == nil || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("%v: want one line and a failure, got %v %q", args, err, e)
		}
	}
	if owner, epoch := fsOwner(t, c, testenv.FSName); owner != "n1" || epoch != e0 {
		t.Fatalf("refused moves changed the owner: %s at %d", owner, epoch)
	}
	out := c.MustCLI("failover", testenv.FSName, "--to", "n2")
	if owner, epoch := fsOwner(t, c, testenv.FSName); owner != "n2" || epoch != e0+1 || !strings.Contains(out, "n2") {
		t.Fatalf("after failover --to n2: %s at %d (%s)", owner, epoch, out)
	}
	testenv.DropCaches()
	if sumFile(t, c.Nodes["n1"].M("a")) != want {
		t.Fatal("wrong bytes after the move")
	}
	if st, _, _ := c.CLI("status"); !strings.Contains(st, "moved by hand to n2") {
		t.Fatalf("status does not show the move:\n%s", st)
	}
	if !strings.Contains(c.Nodes["n2"].Log(), "DM session started") || !strings.Contains(c.Nodes["n1"].Log(), "filesystem handed over") {
		t.Fatal("the session did not move")
	}
}

// failover=sync: the eligible nodes vote with their priority keys and the
// best key takes over (here n3, weighted up, over n2).
func TestFailoverSyncVote(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "failover=sync")
	c.Nodes["n3"].Args = []string{"--weight", "100"}
	c.Start("n1", "n2", "n3")
	_, e0 := fsOwner(t, c, testenv.FSName)
	c.Nodes["n1"].Kill9()
	owner, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o != "n1" })
	if owner != "n3" || epoch != e0+1 {
		t.Fatalf("after the vote: owner %s at epoch %d, want n3 (best key) at %d", owner, epoch, e0+1)
	}
	for _, n := range []string{"n2", "n3"} {
		if l := c.Nodes[n].Log(); !strings.Contains(l, "failover vote") || !strings.Contains(l, "winner=n3") {
			t.Fatalf("%s did not take part in a vote won by n3:\n%s", n, l)
		}
	}
}

// A node that cannot read the repository for longer than its lease stops
// its sessions (it could have been replaced), and the filesystem is
// served again once the repository is back.
func TestFailoverLeaseOnLostRepository(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	for _, n := range c.Nodes {
		n.Args = []string{"--lease", "2s"}
	}
	c.Start("n1", "n2")
	n1 := c.Nodes["n1"]
	want := writeRandom(t, n1.M("a"), 1<<20)
	c.MustCLI("migrate", n1.M("a"))
	db := c.Repo + "/" + repo.FileName
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// Replaced whole (temp file + rename): a node opening the file in the
	// middle of a rewrite must not see a torn one.
	replace := func(b []byte) {
		os.WriteFile(db+".new", b, 0o600)
		os.Rename(db+".new", db)
	}
	replace([]byte("the shared disk returns garbage now......"))
	restored := false
	defer func() {
		if !restored {
			replace(good)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(n1.Log(), "self-fenced") {
		if time.Now().After(deadline) {
			t.Fatal("the owner kept its session with the repository unreadable")
		}
		time.Sleep(100 * time.Millisecond)
	}
	replace(good)
	restored = true
	// Served again by a node (n2 may take it: n1's lease lapsed too).
	deadline = time.Now().Add(30 * time.Second)
	for strings.Count(n1.Log()+c.Nodes["n2"].Log(), "DM session started") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the filesystem was not served again once the repository was back")
		}
		time.Sleep(100 * time.Millisecond)
	}
	testenv.DropCaches()
	if sumFile(t, c.Nodes["n2"].M("a")) != want {
		t.Fatal("wrong bytes after the repository came back")
	}
}

// DM workers that stay stuck are restarted once by the watchdog, then the
// filesystem is given up to another node; the waiting reader gets its bytes.
func TestFailoverStuckWorkers(t *testing.T) {
	m := testenv.StartMinIO(t)
	c := testenv.NewCluster(t, m.Bucket(t, "hsm"), m.EnvList(), "n1", "n2")
	c.Nodes["n1"].Args = []string{"--stuck-after", "2s"}
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("a"), 1<<20)
	c.MustCLI("migrate", n1.M("a"))
	testenv.DropCaches()
	m.Pause() // every recall hangs: n1's workers finish nothing
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	done := make(chan [32]byte, 1)
	go func() {
		b, _ := os.ReadFile(n2.M("a"))
		done <- sha256.Sum256(b)
	}()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	l := n1.Log()
	if !strings.Contains(l, "restarting the session once") || !strings.Contains(l, "active failover") {
		t.Fatalf("n1 did not restart its session once and then give up:\n%s", l)
	}
	m.Resume()
	resumed = true
	select {
	case sum := <-done:
		if sum != want {
			t.Fatal("wrong bytes")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("reader still waiting after the failover")
	}
}
