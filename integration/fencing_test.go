package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

func pausedReleaseThenChange(t *testing.T, point string) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	// A short hold-lease: n2's hold for n1's release ends while n1 is
	// stopped, so only the right keeps n2 from the file.
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "release-wait=100ms", "hold-lease=1s")
	c.Nodes["n1"].Env = []string{"CASCADEFS_FAILPOINTS=" + point + "=stop@1"}
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	size := 4 << 20
	orig := make([]byte, size)
	rand.Read(orig)
	if err := os.WriteFile(n1.M("f"), orig, 0o644); err != nil {
		t.Fatal(err)
	}
	go c.CLI("migrate", n1.M("f")) // n1 stops inside it
	resume := waitStopped(t, n1)
	defer resume()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
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
