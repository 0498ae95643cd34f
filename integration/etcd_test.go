package integration

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// Three nodes on a three-member etcd cluster: the owner is killed while
// readers on the two others wait on recalls; once its etcd lease lapses
// another node takes over and every reader gets its bytes. Status shows
// the etcd engine and the leases.
func TestEtcdFailoverReleasesWaitingReaders(t *testing.T) {
	etcd := testenv.StartEtcd(t, 3)
	m := testenv.StartMinIO(t)
	c := testenv.NewClusterOn(t, etcd.URL(), m.Bucket(t, "hsm"), m.EnvList(), "n1", "n2", "n3")
	c.Start("n1", "n2", "n3")
	n1, n2, n3 := c.Nodes["n1"], c.Nodes["n2"], c.Nodes["n3"]
	if st := c.MustCLI("status"); !strings.Contains(st, "repository engine etcd") || !strings.Contains(st, "live (ttl 2s)") {
		t.Fatalf("status does not show the etcd engine and the leases:\n%s", st)
	}
	const files = 10
	want := map[string][32]byte{}
	for i := range files {
		name := fmt.Sprintf("f%d", i)
		want[name] = writeRandom(t, n1.M(name), 1<<20)
		c.MustCLI("migrate", n1.M(name))
	}
	testenv.DropCaches()
	m.Pause() // recalls hang at n1 until it dies
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	_, e0 := fsOwner(t, c, testenv.FSName)
	type result struct {
		name string
		sum  [32]byte
	}
	results := make(chan result, files)
	var wg sync.WaitGroup
	for i := range files {
		name := fmt.Sprintf("f%d", i)
		reader := n2
		if i%2 == 1 {
			reader = n3
		}
		wg.Add(1)
		go func() { defer wg.Done(); results <- result{name, sumFile(t, reader.M(name))} }()
	}
	time.Sleep(time.Second) // the readers' events wait at n1
	killed := time.Now()
	n1.Kill9()
	m.Resume()
	resumed = true
	owner, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	t.Logf("taken over by %s %v after the kill", owner, time.Since(killed).Round(10*time.Millisecond))
	wg.Wait()
	close(results)
	for r := range results {
		if r.sum != want[r.name] {
			t.Errorf("reader of %s after the failover: wrong bytes", r.name)
		}
	}
	if epoch != e0+1 {
		t.Fatalf("epoch after one takeover: %d, want %d", epoch, e0+1)
	}
}

// Nodes on an etcd that speaks only TLS, asks for a client certificate
// and has authentication on, all given through the environment: a file
// migrated on one node reads back on the other, and the other takes over
// once the owner is killed. The credentials never show on a command line.
func TestEtcdTLSAndPasswordCluster(t *testing.T) {
	etcd := testenv.StartSecureEtcd(t)
	c := testenv.NewClusterOn(t, etcd.URL(), "", etcd.Env(), "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	if st := c.MustCLI("status"); !strings.Contains(st, "repository engine etcd") {
		t.Fatalf("status:\n%s", st)
	}
	want := writeRandom(t, n1.M("f"), 2<<20)
	c.MustCLI("migrate", n1.M("f"))
	for _, n := range []*testenv.Node{n1, n2} {
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.PID())); err != nil || strings.Contains(string(cmdline), etcd.Password) {
			t.Fatalf("%s: the etcd password on the command line (or unreadable: %v)", n.Name, err)
		}
	}
	testenv.DropCaches()
	n1.Kill9()
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	if sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes after the takeover")
	}
}
