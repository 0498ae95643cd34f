package member

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// fast is the default timing with faster gossip.
func fast() Timing {
	t := DefaultTiming()
	t.GossipInterval = 50 * time.Millisecond
	return t
}

func start(t *testing.T, name string, key []byte) *Member {
	t.Helper()
	bind := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	m, err := Start(Config{Name: name, Bind: bind, RPC: "127.0.0.1:1", Key: key, Log: slog.Default(), Timing: fast()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Shutdown)
	return m
}

func addr(m *Member) string { i, _ := m.Lookup(m.cfg.Name); return i.Addr }

func waitStatus(t *testing.T, m *Member, name string, want Status) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if i, ok := m.Lookup(name); ok && i.Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never saw %s %s: %+v", m.cfg.Name, name, want, m.Members())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMembership(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	n1, n2, n3 := start(t, "n1", key), start(t, "n2", key), start(t, "n3", key)
	if err := n2.Join([]string{addr(n1)}); err != nil {
		t.Fatal(err)
	}
	if err := n3.Join([]string{addr(n2)}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, n1, "n3", Alive)
	if i, _ := n1.Lookup("n3"); i.RPC != "127.0.0.1:1" {
		t.Fatalf("rpc tag: %+v", i)
	}
	// Wrong key, or none: cannot join.
	if err := start(t, "x1", []byte("another key of thirty-two bytes!")).Join([]string{addr(n1)}); err == nil {
		t.Fatal("a node with another key joined")
	}
	if err := start(t, "x2", nil).Join([]string{addr(n1)}); err == nil {
		t.Fatal("a node without the key joined")
	}
	if _, ok := n1.Lookup("x1"); ok {
		t.Fatal("a node with another key is listed")
	}
	// A crash is seen as failed, a goodbye as left.
	n3.Shutdown()
	waitStatus(t, n1, "n3", Failed)
	n2.Leave()
	waitStatus(t, n1, "n2", Left)
}
