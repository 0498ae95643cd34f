package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/cluster/rpc"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// clusters runs fn on a three-node cluster with a directory archive and
// with a real MinIO.
func clusters(t *testing.T, fn func(t *testing.T, c *testenv.Cluster)) {
	t.Run("file", func(t *testing.T) {
		c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
		fn(t, c)
	})
	t.Run("s3", func(t *testing.T) {
		m := testenv.StartMinIO(t)
		c := testenv.NewCluster(t, m.Bucket(t, "hsm"), m.EnvList(), "n1", "n2", "n3")
		fn(t, c)
	})
}

// clusterState is a file's state as `cascadefs ls` shows it through node n.
func clusterState(t *testing.T, c *testenv.Cluster, n *testenv.Node, rel string) string {
	t.Helper()
	var entries []struct{ State string }
	out := c.MustCLI("ls", "--json", n.M(rel))
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 1 {
		t.Fatalf("ls: %v %s", err, out)
	}
	return entries[0].State
}

var recalledLine = regexp.MustCompile(`msg=recalled .*file=(\S+) bytes=(\d+) fetched=(\d+)`)

// Files written on one node are seen on the others; a file migrated through
// one node reads back right through the others, recalled by the owner; all
// three nodes reading one stub at once fetch each byte once.
func TestClusterSharedFilesystem(t *testing.T) {
	clusters(t, func(t *testing.T, c *testenv.Cluster) {
		c.Start("n1", "n2", "n3")
		n1, n2, n3 := c.Nodes["n1"], c.Nodes["n2"], c.Nodes["n3"]
		want := writeRandom(t, n1.M("a"), 3<<20+11)
		for _, n := range []*testenv.Node{n2, n3} {
			if sumFile(t, n.M("a")) != want {
				t.Fatalf("%s reads other bytes than n1 wrote", n.Name)
			}
		}
		// Rewritten through n2: n1 and n3 see the new bytes and size at
		// their next open, although they read the file before.
		for _, n := range []*testenv.Node{n1, n3} {
			os.Stat(n.M("a")) // cache its attributes there
		}
		want = writeRandom(t, n2.M("a"), 5<<20+13) // larger: cached sizes would cut the read short
		for _, n := range []*testenv.Node{n1, n3} {
			if st, err := os.Stat(n.M("a")); err != nil || st.Size() != 5<<20+13 {
				t.Fatalf("%s still sees the old size after a rewrite through n2 was closed: %v %v", n.Name, st.Size(), err)
			}
		}
		for _, n := range []*testenv.Node{n1, n3} {
			if sumFile(t, n.M("a")) != want {
				t.Fatalf("%s reads stale bytes after a rewrite through n2", n.Name)
			}
		}

		c.MustCLI("migrate", n2.M("a")) // asked on n2, done by the owner n1
		if s := clusterState(t, c, n3, "a"); s != "migrated" {
			t.Fatalf("state through n3 after migrate through n2: %s", s)
		}
		testenv.DropCaches()
		if sumFile(t, n3.M("a")) != want {
			t.Fatal("n3 read wrong bytes of a stub")
		}
		if sumFile(t, n1.M("a")) != want {
			t.Fatal("n1 read wrong bytes of a recalled stub")
		}

		// One large stub read by all three nodes at once.
		bigWant := writeRandom(t, n1.M("big"), 40<<20+5)
		c.MustCLI("migrate", n1.M("big"))
		testenv.DropCaches()
		var wg sync.WaitGroup
		sums := make([][32]byte, 3)
		for i, n := range []*testenv.Node{n1, n2, n3} {
			wg.Add(1)
			go func() { defer wg.Done(); sums[i] = sumFile(t, n.M("big")) }()
		}
		wg.Wait()
		for i, s := range sums {
			if s != bigWant {
				t.Fatalf("reader %d of the shared stub read wrong bytes", i+1)
			}
		}
		deadline := time.Now().Add(30 * time.Second)
		for clusterState(t, c, n2, "big") != "premigrated" && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		var fetched int64 = -1
		for _, m := range recalledLine.FindAllStringSubmatch(n1.Log(), -1) {
			if m[1] == "big" {
				fetched, _ = strconv.ParseInt(m[3], 10, 64)
			}
		}
		if fetched != 40<<20+5 {
			t.Fatalf("the owner fetched %d bytes for a %d-byte stub read by three nodes (each byte once is the goal)", fetched, 40<<20+5)
		}
		if strings.Contains(n2.Log(), "msg=recalled") || strings.Contains(n3.Log(), "msg=recalled") {
			t.Fatal("a node that does not own the filesystem recalled")
		}

		// recall asked on n3 is done by the owner; a stub deleted through n2
		// has its archive object deleted by the owner.
		c.MustCLI("migrate", n1.M("a"), n1.M("big"))
		c.MustCLI("recall", n3.M("a"))
		if s := clusterState(t, c, n2, "a"); s != "premigrated" {
			t.Fatalf("after recall through n3: %s", s)
		}
		if err := os.Remove(n2.M("big")); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(30 * time.Second)
		for len(c.ArchiveObjects()) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("objects left after deleting a stub through n2: %v", c.ArchiveObjects())
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// Names and attributes changed through one node are seen by the others
// within about a round trip, although their kernels had them cached (for a
// second otherwise).
func TestClusterSeesNamesAndAttributesAtOnce(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	for _, name := range []string{"gone", "old", "mode", "short"} {
		if err := os.WriteFile(n1.M(name), []byte("some bytes"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(n1.M("dir"), 0o755)
	for _, name := range []string{"gone", "old", "new", "mode", "short", "dir"} {
		os.Stat(n2.M(name)) // cached by n2's kernel (a miss is not cached)
	}
	if err := os.Remove(n1.M("gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(n1.M("old"), n1.M("new")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(n1.M("mode"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(n1.M("short"), 4); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(n1.M("dir")); err != nil {
		t.Fatal(err)
	}
	// Well under the kernels' one-second timeouts (which would pass this
	// test by themselves), and without waiting on each call through n1.
	deadline := time.Now().Add(300 * time.Millisecond)
	var stale []string
	for {
		stale = nil
		for _, name := range []string{"gone", "old", "dir"} {
			if _, err := os.Stat(n2.M(name)); !errors.Is(err, os.ErrNotExist) {
				stale = append(stale, name+" still there")
			}
		}
		if _, err := os.Stat(n2.M("new")); err != nil {
			stale = append(stale, "new missing")
		}
		if st, err := os.Stat(n2.M("mode")); err != nil || st.Mode().Perm() != 0o600 {
			stale = append(stale, "mode not 0600")
		}
		if st, err := os.Stat(n2.M("short")); err != nil || st.Size() != 4 {
			stale = append(stale, "size not 4")
		}
		if len(stale) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(stale) > 0 {
		t.Fatalf("n2 after changes through n1, 300 ms on: %v", stale)
	}
}

// A release waits while the file is open on another node, and is skipped
// if it stays open; once closed everywhere, it goes through.
func TestClusterReleaseWaitsForOtherNodes(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "release-wait=1s")
	c.Start("n1", "n2", "n3")
	n1, n3 := c.Nodes["n1"], c.Nodes["n3"]
	want := writeRandom(t, n1.M("f"), 1<<20)
	f, err := os.Open(n3.M("f"))
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, _ := c.CLI("migrate", n1.M("f"))
	if !strings.Contains(out+errOut, "skipped") || !strings.Contains(out+errOut, "n3") {
		t.Fatalf("migrate while open on n3:\n%s%s", out, errOut)
	}
	if s := clusterState(t, c, n1, "f"); s != "premigrated" {
		t.Fatalf("a file open on n3 was released: %s", s)
	}
	f.Close()
	c.MustCLI("migrate", n1.M("f"))
	if s := clusterState(t, c, n1, "f"); s != "migrated" {
		t.Fatalf("after close on n3: %s", s)
	}
	testenv.DropCaches()
	if sumFile(t, n3.M("f")) != want {
		t.Fatal("n3 read wrong bytes after the release")
	}
}

// Bad input: a wrong key cannot join or call; a taken name, a join address
// that does not answer, a missing repository are refused with one line.
func TestClusterRefusesBadNodes(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "x")
	c.Start("n1")
	n1 := c.Nodes["n1"]

	// A node with another key cannot join.
	other := c.Dir + "/other.key"
	os.WriteFile(other, []byte(c.MustCLI("keygen")), 0o600)
	x := c.Nodes["x"]
	_, e, err := c.CLI("node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo,
		"--mount-root", x.MountRoot, "--key-file", other, "--join", n1.Bind)
	if err == nil || !strings.Contains(e, "join") {
		t.Fatalf("node with another key: %v %q", err, e)
	}
	// Nor call: the RPC refuses a caller without the key, and says so in its log.
	cl := rpc.NewClient("x", rpc.NewKey([]byte("another key of thirty-two bytes!")))
	if err := cl.Call(context.Background(), "n1", n1.RPC, "/ping", struct{}{}, nil); !errors.Is(err, rpc.ErrUnauthorized) {
		t.Fatalf("call with another key: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(n1.Log(), "node RPC refused") {
		if time.Now().After(deadline) {
			t.Fatal("refused call not logged")
		}
		time.Sleep(20 * time.Millisecond)
	}
	openKey := c.Dir + "/open.key"
	os.WriteFile(openKey, []byte(c.MustCLI("keygen")), 0o644)
	os.Chmod(openKey, 0o644)
	// Secret files (issue 20, item 6): one rule for all, each refused
	// with a sentence: owned by root, no access for group or others.
	othersKey := c.Dir + "/others.key"
	os.WriteFile(othersKey, []byte(c.MustCLI("keygen")), 0o600)
	os.Chown(othersKey, nobody, nobody)
	openCreds := c.Dir + "/open.creds"
	os.WriteFile(openCreds, []byte("AWS_SECRET_ACCESS_KEY=x\n"), 0o644)
	os.Chmod(openCreds, 0o644)
	for _, sc := range []struct{ flag, file, want string }{
		{"--key-file", othersKey, "owned by uid 65534"},
		{"--key-file", openKey, "chmod 600"},
		{"--credentials-file", openCreds, "credentials file " + openCreds + ": unsafe secret file: group or others may use it (mode 644); chmod 600"},
	} {
		args := []string{"node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo, "--mount-root", x.MountRoot,
			"--key-file", c.KeyFile, sc.flag, sc.file}
		if _, e, err := c.CLI(args...); err == nil || !strings.Contains(e, sc.want) {
			t.Errorf("%s %s: want a refusal saying %q, got %v %q", sc.flag, sc.file, sc.want, err, e)
		}
	}
	cases := map[string][]string{
		"taken": {"node", "--name", "n1", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo,
			"--mount-root", x.MountRoot, "--key-file", c.KeyFile},
		"join": {"node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo,
			"--mount-root", x.MountRoot, "--key-file", c.KeyFile, "--join", "127.0.0.1:1"},
		"repo": {"node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Dir + "/nope",
			"--mount-root", x.MountRoot, "--key-file", c.KeyFile},
		"key": {"node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo,
			"--mount-root", x.MountRoot, "--key-file", c.Dir + "/nokey"},
		"no key": {"node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo,
			"--mount-root", x.MountRoot},
		"open key": {"node", "--name", "x", "--bind", x.Bind, "--rpc", x.RPC, "--repo", c.Repo,
			"--mount-root", x.MountRoot, "--key-file", openKey},
	}
	for name, args := range cases {
		_, e, err := c.CLI(args...)
		if err == nil || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("%s: want one line and a failure, got %v %q", name, err, e)
		}
	}
	// The live n1 is untouched and still the only member.
	var rep struct {
		Cluster struct {
			Members []struct{ Name, Status string }
		}
	}
	json.Unmarshal([]byte(c.MustCLI("status", "--json")), &rep)
	if len(rep.Cluster.Members) != 1 || rep.Cluster.Members[0].Name != "n1" || rep.Cluster.Members[0].Status != "alive" {
		t.Fatalf("members after refused nodes: %+v", rep.Cluster.Members)
	}
}

// fs add/set/remove refuse bad input with one line and change nothing.
func TestFSCommandErrors(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	before := c.MustCLI("fs", "list", "--repo", c.Repo, "--json")
	bad := [][]string{
		{"fs", "add", "--repo", c.Repo, testenv.FSName, "--backing", c.Backing, "--archive", c.Archive},
		{"fs", "add", "--repo", c.Repo, "two", "--backing", c.Backing, "--archive", c.Archive, "--candidates", "n1", "--owner", "n2"},
		{"fs", "add", "--repo", c.Repo, "two", "--backing", c.Dir + "/missing", "--archive", c.Archive},
		{"fs", "add", "--repo", c.Repo, "two", "--backing", c.Backing, "--archive", "ftp://x"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "workers=0"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "candidates=n2"}, // leaves out the owner n1
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "colour=red"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "low=80"}, // over the default high, 70
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "high=50", "low=50"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "high=150"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "quota=lots"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "interval=-1s"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "min-age=-1h"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "exclude=[abc"},
		{"fs", "set", "--repo", c.Repo, testenv.FSName, "premigrate=101"},
		{"fs", "remove", "--repo", c.Repo, "nope"},
		{"fs", "list", "--repo", c.Dir + "/nope"},
	}
	for _, args := range bad {
		_, e, err := c.CLI(args...)
		if err == nil || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("%v: want one line and a failure, got %v %q", args[1:3], err, e)
		}
	}
	if after := c.MustCLI("fs", "list", "--repo", c.Repo, "--json"); after != before {
		t.Fatalf("refused commands changed the repository:\n%s\n%s", before, after)
	}
	os.WriteFile(c.Repo+"/cascadefs.db", []byte("garbage garbage garbage garbage"), 0o600)
	if _, e, err := c.CLI("fs", "list", "--repo", c.Repo); err == nil || !strings.Contains(e, "corrupt") {
		t.Fatalf("corrupt repository: %v %q", err, e)
	}
}

// A node stopped (SIGTERM) while files are written and closed through its
// mount stops: stopping a mount once waited for its change queue, whose
// sends waited for the lock the stop held (found by the crash suite).
func TestNodeStopsWhileFilesClose(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1 := c.Nodes["n1"]
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := n1.M(fmt.Sprintf("f%d", i%10))
			if os.WriteFile(p, []byte("data"), 0o644) != nil {
				return // the mount is going away
			}
			os.Chmod(p, 0o600)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	n1.Stop() // fails the test if SIGTERM is ignored for 30s
	close(stop)
	<-done
	t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
}

// pausedReleaseCluster starts n1 and n2 with 2 s holds, n1's first
// release pausing at point; marker is the file whose removal resumes it.
func pausedReleaseCluster(t *testing.T, point string) (c *testenv.Cluster, marker string) {
	c = testenv.NewCluster(t, "", nil, "n1", "n2")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "hold-lease=2s", "release-wait=100ms")
	dir := t.TempDir()
	c.Nodes["n1"].Env = []string{"CASCADEFS_FAILPOINTS=" + point + "=pause@1", "CASCADEFS_FAILPOINT_DIR=" + dir}
	c.Start("n1", "n2")
	return c, filepath.Join(dir, point+".paused")
}

// A release that outlasts the other nodes' holds (paused here after they
// were granted, past hold-lease) does not punch: a node whose hold ended
// could have opened the file by passthrough and read the punched zeros.
func TestClusterReleaseOutlastingItsHoldsDoesNotPunch(t *testing.T) {
	c, marker := pausedReleaseCluster(t, failpoint.MigrateReleaseHeld)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("f"), 4<<20)
	done := make(chan string, 1)
	go func() { o, e, _ := c.CLI("migrate", n1.M("f")); done <- o + e }()
	waitForFile(t, marker)
	time.Sleep(3 * time.Second) // n2's hold ends after 2 s
	// n2 may open the file now: its hold is over.
	if sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes on n2 while the release was paused")
	}
	os.Remove(marker)
	out := <-done
	if s := clusterState(t, c, n2, "f"); s == "migrated" {
		t.Fatalf("a release that outlasted its holds punched the file (migrate said %q)", out)
	}
	if !strings.Contains(out, "holds may have ended") {
		t.Fatalf("n1 does not say why it did not release:\n%s", out)
	}
	testenv.DropCaches()
	if sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes after the release gave up")
	}
}

// A release paused after its last confirm of the holds, past hold-lease:
// another node whose hold ended opens the file meanwhile. The old code
// let that open go by kernel passthrough, and the late punch left it
// reading zeros; the read shield makes such an open come through the
// daemon, which recalls what was punched.
func TestOpenDuringPausedReleaseReadsRightBytes(t *testing.T) {
	c, marker := pausedReleaseCluster(t, failpoint.MigrateAfterConfirm)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := make([]byte, 4<<20)
	rand.Read(want)
	if err := os.WriteFile(n1.M("f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan cliResult, 1)
	go func() { o, e, err := c.CLI("migrate", n1.M("f")); done <- cliResult{err, o + e} }()
	waitForFile(t, marker)
	time.Sleep(3 * time.Second) // n2's hold ends after 2 s
	f, err := os.Open(n2.M("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, want[:1<<20]) {
		t.Fatalf("first MiB on n2 while the release was paused: %v", err)
	}
	os.Remove(marker)
	if r := <-done; r.err != nil {
		t.Fatalf("migrate: %v\n%s", r.err, r.out)
	}
	if s := clusterState(t, c, n2, "f"); s != "migrated" {
		t.Fatalf("state %s after the release", s)
	}
	testenv.DropCaches()
	rest, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, want[1<<20:]) {
		z := 0
		for z < len(rest) && rest[z] == 0 {
			z++
		}
		t.Fatalf("n2 read %d wrong bytes after the punch (%d zeros at the start)", countDiff(rest, want[1<<20:]), z)
	}
}

func countDiff(a, b []byte) int {
	n := 0
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			n++
		}
	}
	return n + max(0, len(b)-len(a))
}
