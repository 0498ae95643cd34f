package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// netCluster is three nodes and three etcd members, each in a network
// namespace of its own, sharing the backing directory (the shared disk)
// and a directory archive; n1 owns fs1 and stubs f0..f3 are migrated.
func netCluster(t *testing.T) (*testenv.Net, *testenv.Etcd, *testenv.Cluster, map[string][32]byte) {
	t.Helper()
	net := testenv.NewNet(t)
	etcd := testenv.StartEtcdIn(t, net, 3)
	c := testenv.NewClusterOn(t, etcd.URL(), "", nil, "n1", "n2", "n3")
	c.PlaceIn(net)
	c.Start("n1", "n2", "n3")
	want := map[string][32]byte{}
	for i := range 4 {
		name := fmt.Sprintf("f%d", i)
		want[name] = writeRandom(t, c.Nodes["n1"].M(name), 1<<20)
		c.MustCLI("migrate", c.Nodes["n1"].M(name))
	}
	testenv.DropCaches()
	return net, etcd, c, want
}

// stableOwner watches the owner for d and fails if it changes.
func stableOwner(t *testing.T, c *testenv.Cluster, d time.Duration) (string, uint64) {
	t.Helper()
	owner, epoch := fsOwner(t, c, testenv.FSName)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		o, e := fsOwner(t, c, testenv.FSName)
		if o != owner || e != epoch {
			t.Fatalf("ownership flapped: %s at %d, then %s at %d", owner, epoch, o, e)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return owner, epoch
}

// settledOwner waits (up to within) for an owner that holds for d.
func settledOwner(t *testing.T, c *testenv.Cluster, d, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		owner, epoch := fsOwner(t, c, testenv.FSName)
		stable := owner != ""
		for end := time.Now().Add(d); stable && time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			o, e := fsOwner(t, c, testenv.FSName)
			stable = o == owner && e == epoch
		}
		if stable {
			return owner
		}
		if time.Now().After(deadline) {
			t.Fatalf("no owner held for %v within %v", d, within)
		}
	}
}

// The owner's link goes down (it keeps the shared disk): it cannot renew
// its etcd lease, stops its session, and the others take over after the
// lease; readers on them get their bytes. Healed, it takes nothing back:
// one owner, no flapping, and its own readers are served again.
func TestNetnsOwnerCutOff(t *testing.T) {
	net, _, c, want := netCluster(t)
	_ = net
	n1 := c.Nodes["n1"]
	_, e0 := fsOwner(t, c, testenv.FSName)
	cut := time.Now()
	n1.Host.Cut()
	owner, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	t.Logf("taken over by %s %v after the cut", owner, time.Since(cut).Round(10*time.Millisecond))
	if epoch != e0+1 {
		t.Fatalf("epoch %d after one takeover, want %d", epoch, e0+1)
	}
	for name, sum := range want {
		reader := c.Nodes["n2"]
		if name == "f1" || name == "f3" {
			reader = c.Nodes["n3"]
		}
		if sumFile(t, reader.M(name)) != sum {
			t.Fatalf("reader of %s on %s: wrong bytes after the cut", name, reader.Name)
		}
	}
	testenv.WaitFor(t, "the cut-off owner stops its session", 20*time.Second, func() bool {
		l := n1.Log()
		return strings.Contains(l, "self-fenced") || strings.Contains(l, "DM session stopped")
	})
	n1.Host.Heal()
	time.Sleep(3 * time.Second) // gossip and leases settle
	if o, e := stableOwner(t, c, 6*time.Second); o != owner || e != epoch {
		t.Fatalf("after the heal the owner is %s at %d, was %s at %d", o, e, owner, epoch)
	}
	testenv.DropCaches()
	if sumFile(t, n1.M("f0")) != want["f0"] {
		t.Fatal("wrong bytes on n1 after the heal")
	}
	if _, err := os.Stat(n1.M("f2")); err != nil {
		t.Fatal(err)
	}
}

// A node that owns nothing is cut off: no takeover anywhere, readers on
// the owner go on; healed, it serves its readers again.
func TestNetnsNonOwnerCutOff(t *testing.T) {
	_, _, c, want := netCluster(t)
	n1, n3 := c.Nodes["n1"], c.Nodes["n3"]
	owner, epoch := fsOwner(t, c, testenv.FSName)
	n3.Host.Cut()
	if o, e := stableOwner(t, c, 8*time.Second); o != owner || e != epoch {
		t.Fatalf("owner moved to %s at %d with a non-owner cut off", o, e)
	}
	if sumFile(t, n1.M("f0")) != want["f0"] {
		t.Fatal("wrong bytes on the owner")
	}
	n3.Host.Heal()
	time.Sleep(3 * time.Second)
	if sumFile(t, n3.M("f1")) != want["f1"] {
		t.Fatal("wrong bytes on the healed node")
	}
	if o, e := fsOwner(t, c, testenv.FSName); o != owner || e != epoch {
		t.Fatalf("owner moved to %s at %d after the heal", o, e)
	}
}

// The owner loses etcd but not its peers (the links to the etcd members
// drop what it sends): it cannot renew, stops acting, and another node
// takes over once its lease expired at the servers.
func TestNetnsOwnerCutFromEtcdOnly(t *testing.T) {
	_, etcd, c, want := netCluster(t)
	n1 := c.Nodes["n1"]
	var members []*testenv.Host
	for _, m := range etcd.Members {
		members = append(members, m.Host)
	}
	n1.Host.Block(members...)
	owner, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	if !strings.Contains(n1.Log(), "self-fenced") {
		t.Fatalf("n1 did not stop acting:\n%s", n1.Log())
	}
	if sumFile(t, c.Nodes[owner].M("f2")) != want["f2"] {
		t.Fatal("wrong bytes on the new owner")
	}
	n1.Host.Unblock(members...)
	time.Sleep(3 * time.Second)
	if o, _ := stableOwner(t, c, 5*time.Second); o != owner {
		t.Fatalf("owner %s after n1 got etcd back, was %s", o, owner)
	}
}

// etcd loses one member of three: no takeover, commits go on. All three
// lost: resident data is still served on every node, nobody takes over
// and nothing is committed; once etcd is back, service is normal.
func TestNetnsEtcdMembersLost(t *testing.T) {
	_, etcd, c, want := netCluster(t)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	owner, _ := fsOwner(t, c, testenv.FSName)
	etcd.Members[2].Kill()
	// The lost member may have led: renewals can stall through the
	// election, and an owner whose lease lapsed serves again at a new
	// epoch. The owner itself must not change.
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		if o, e := fsOwner(t, c, testenv.FSName); o != owner {
			t.Fatalf("owner moved to %s at %d with one etcd member lost", o, e)
		}
		time.Sleep(200 * time.Millisecond)
	}
	resident := writeRandom(t, n1.M("resident"), 1<<20)
	c.MustCLI("migrate", n1.M("f0")) // already migrated: a no-op that needs the owner
	if sumFile(t, n2.M("f3")) != want["f3"] {
		t.Fatal("wrong bytes with one etcd member lost")
	}

	etcd.Members[0].Kill()
	etcd.Members[1].Kill()
	time.Sleep(5 * time.Second) // every lease lapses by its holder's clock
	for _, n := range []*testenv.Node{n1, n2, c.Nodes["n3"]} {
		if sumFile(t, n.M("resident")) != resident {
			t.Fatalf("resident data not served on %s with etcd down", n.Name)
		}
	}
	if _, _, err := c.CLI("migrate", n1.M("resident")); err == nil {
		t.Fatal("a migration was committed with etcd down")
	}
	etcd.Restart(t, etcd.Members...)
	// Every lease expired in the outage: the first node to renew may take
	// the filesystem over once; then it stays.
	o := settledOwner(t, c, 4*time.Second, 30*time.Second)
	c.MustCLI("migrate", c.Nodes[o].M("resident"))
	testenv.DropCaches()
	if sumFile(t, n2.M("resident")) != resident || sumFile(t, n2.M("f1")) != want["f1"] {
		t.Fatal("wrong bytes once etcd was back")
	}
}

// The owner is stopped (SIGSTOP) for twice its lease while a reader on n2
// waits on a stub: another node takes over and the reader gets its bytes;
// woken, the old owner stops acting and takes nothing back.
func TestNetnsOwnerPaused(t *testing.T) {
	_, _, c, want := netCluster(t)
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	n1.Pause()
	resumed := false
	defer func() {
		if !resumed {
			n1.Resume()
		}
	}()
	got := make(chan [32]byte, 1)
	go func() { got <- sumFile(t, n2.M("f0")) }()
	owner, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	select {
	case sum := <-got:
		if sum != want["f0"] {
			t.Fatal("the waiting reader got wrong bytes")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting reader was not served after the takeover")
	}
	time.Sleep(4 * time.Second) // twice the lease
	n1.Resume()
	resumed = true
	testenv.WaitFor(t, "the woken owner stops acting", 20*time.Second, func() bool {
		l := n1.Log()
		return strings.Contains(l, "self-fenced") || strings.Contains(l, "replaced:")
	})
	if o, e := stableOwner(t, c, 5*time.Second); o != owner || e != epoch {
		t.Fatalf("owner %s at %d after the old owner woke, was %s at %d", o, e, owner, epoch)
	}
	testenv.DropCaches()
	if sumFile(t, n1.M("f1")) != want["f1"] {
		t.Fatal("wrong bytes on the woken node")
	}
}

// The owner is cut from its peers but still reaches etcd (a split
// between the nodes): it renews its lease, so nobody may take its
// filesystem by the lease; it sees one of the three live leases, and the
// quorum rule makes it give the filesystem up after a lease; the two
// that see each other take it, and their readers get their bytes.
// Without the rule the filesystem stayed with a node nobody could reach.
func TestNetnsOwnerCutFromPeers(t *testing.T) {
	_, _, c, want := netCluster(t)
	n1, n2, n3 := c.Nodes["n1"], c.Nodes["n2"], c.Nodes["n3"]
	n1.Host.Block(n2.Host, n3.Host)
	n2.Host.Block(n1.Host)
	n3.Host.Block(n1.Host)
	defer func() {
		n1.Host.Unblock(n2.Host, n3.Host)
		n2.Host.Unblock(n1.Host)
		n3.Host.Unblock(n1.Host)
	}()
	owner, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	if !strings.Contains(n1.Log(), "minority") {
		t.Fatalf("n1 does not say it gave the filesystem up in a minority:\n%s", n1.Log())
	}
	for _, reader := range []*testenv.Node{n2, n3} {
		if sumFile(t, reader.M("f2")) != want["f2"] {
			t.Fatalf("wrong bytes on %s after %s took over", reader.Name, owner)
		}
	}
}
