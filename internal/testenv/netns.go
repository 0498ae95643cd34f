package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Net is a private network of hosts on this machine: a bridge in the
// test's own namespace and one network namespace per host, each joined
// to the bridge by a veth pair. Processes enter only the host's network
// namespace (nsenter --net), so their FUSE mounts stay visible to the
// test. Everything is removed when the test ends.
type Net struct {
	t      testing.TB
	id     string
	bridge string
	subnet string // "10.213.N"
	mu     sync.Mutex
	hosts  []*Host
}

// Host is one network namespace of a Net.
type Host struct {
	Name string
	NS   string
	IP   string
	link string // the veth end on the bridge: down cuts the host off
	net  *Net
}

// NewNet creates the bridge. Without ip (iproute2) the test fails under
// make test.
func NewNet(t testing.TB) *Net {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		Missing(t, "ip (iproute2) not found")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		Missing(t, "nsenter (util-linux) not found")
	}
	removeStale()
	var b [2]byte
	rand.Read(b[:])
	n := &Net{t: t, id: hex.EncodeToString(b[:]), subnet: fmt.Sprintf("10.213.%d", 1+int(b[0])%250)}
	n.bridge = "cfb" + n.id
	t.Cleanup(n.remove)
	n.ip("link", "add", "name", n.bridge, "type", "bridge")
	n.ip("addr", "add", n.subnet+".1/24", "dev", n.bridge)
	n.ip("link", "set", n.bridge, "up")
	return n
}

func (n *Net) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Gateway is the test's own address on the network: servers of the test
// (MinIO) listen there to be reached from every host.
func (n *Net) Gateway() string { return n.subnet + ".1" }

// Host adds a host with the next address.
func (n *Net) Host(name string) *Host {
	n.t.Helper()
	n.mu.Lock()
	i := len(n.hosts)
	h := &Host{Name: name, NS: fmt.Sprintf("%s%d-%s-%d", nsPrefix, os.Getpid(), n.id, i), IP: fmt.Sprintf("%s.%d", n.subnet, i+2),
		link: fmt.Sprintf("cfh%s%d", n.id, i), net: n}
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	inner := fmt.Sprintf("cfg%s%d", n.id, i)
	n.ip("netns", "add", h.NS)
	n.ip("link", "add", h.link, "type", "veth", "peer", "name", inner)
	n.ip("link", "set", inner, "netns", h.NS)
	n.ip("-n", h.NS, "addr", "add", h.IP+"/24", "dev", inner)
	n.ip("-n", h.NS, "link", "set", "lo", "up")
	n.ip("-n", h.NS, "link", "set", inner, "up")
	n.ip("link", "set", h.link, "master", n.bridge)
	n.ip("link", "set", h.link, "up")
	return h
}

// Cut takes the host's link down: it reaches nobody and nobody reaches
// it (its disk, the shared backing directory, stays).
func (h *Host) Cut() { h.net.ip("link", "set", h.link, "down") }

// Heal brings the link back.
func (h *Host) Heal() { h.net.ip("link", "set", h.link, "up") }

// Block drops what the host sends to the other hosts (a one-sided cut:
// a route to nowhere for each).
func (h *Host) Block(others ...*Host) {
	for _, o := range others {
		h.net.ip("-n", h.NS, "route", "add", "blackhole", o.IP+"/32")
	}
}

// Unblock removes what Block added.
func (h *Host) Unblock(others ...*Host) {
	for _, o := range others {
		h.net.ip("-n", h.NS, "route", "del", "blackhole", o.IP+"/32")
	}
}

// Wrap is the command prefix that runs a program in the host's network
// namespace only.
func (h *Host) Wrap() []string { return []string{"nsenter", "--net=/run/netns/" + h.NS} }

// nsPrefix starts the name of every namespace a test makes:
// cascadefs-test-PID-ID-I, so that one left by a test process that died
// (a timeout panic runs no cleanup) is found and removed by the next.
const nsPrefix = "cascadefs-test-"

// removeStale removes the namespaces (killing what runs in them) and
// links of test processes that are gone.
func removeStale() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		parts := strings.Split(rest, "-")
		if len(parts) != 3 {
			continue
		}
		if pid, err := strconv.Atoi(parts[0]); err != nil || syscall.Kill(pid, 0) == nil {
			continue // its test runs
		}
		if out, err := exec.Command("ip", "netns", "pids", e.Name()).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
		exec.Command("ip", "link", "del", "cfh"+parts[1]+parts[2]).Run()
		exec.Command("ip", "link", "del", "cfb"+parts[1]).Run()
	}
}

func (n *Net) remove() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, h := range n.hosts {
		exec.Command("ip", "netns", "del", h.NS).Run() // takes its veth pair along
		exec.Command("ip", "link", "del", h.link).Run()
	}
	exec.Command("ip", "link", "del", n.bridge).Run()
}
