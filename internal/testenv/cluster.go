package testenv

import (
	"bytes"
	"cmp"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// FSName is the filesystem every test cluster serves.
const FSName = "fs1"

// Cluster is a set of `cascadefs node` processes on loopback ports that
// share one backing directory, one repository and one archive.
type Cluster struct {
	t       testing.TB
	Dir     string
	Repo    string
	Backing string
	Archive string
	KeyFile string
	RunDir  string
	Env     []string
	Nodes   map[string]*Node
}

// Node is one node process of a Cluster.
type Node struct {
	c         *Cluster
	Name      string
	Bind      string
	RPC       string
	MountRoot string
	Args      []string // extra flags
	Env       []string // extra environment (failpoints)
	Host      *Host    // its network namespace (nil: the test's own, on loopback)
	proc
}

// NewCluster prepares a cluster of the named nodes (not started) with
// filesystem fs1 owned by the first; archiveURL "" is a directory archive.
func NewCluster(t testing.TB, archiveURL string, env []string, names ...string) *Cluster {
	t.Helper()
	return NewClusterOn(t, "", archiveURL, env, names...)
}

// NewClusterOn is NewCluster on the repository repoURL (an etcd://
// cluster; "" for a bbolt directory of its own).
func NewClusterOn(t testing.TB, repoURL, archiveURL string, env []string, names ...string) *Cluster {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	c := &Cluster{t: t, Dir: dir, Repo: cmp.Or(repoURL, filepath.Join(dir, "repo")), Backing: filepath.Join(dir, "private", "backing"),
		Archive: archiveURL, KeyFile: filepath.Join(dir, "cluster.key"), RunDir: filepath.Join(dir, "run"),
		Env: env, Nodes: map[string]*Node{}}
	if archiveURL == "" {
		c.Archive = "file://" + filepath.Join(dir, "archive")
	}
	for _, p := range []string{c.Backing, c.RunDir} {
		os.MkdirAll(p, 0o755)
	}
	os.Chmod(filepath.Dir(c.Backing), 0o700) // users must only use the mounts
	if repoURL == "" {
		os.MkdirAll(c.Repo, 0o755)
	}
	key := c.MustCLI("keygen")
	if err := os.WriteFile(c.KeyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	c.MustCLI("fs", "add", "--repo", c.Repo, FSName, "--backing", c.Backing, "--archive", c.Archive,
		"--candidates", strings.Join(names, ","), "--owner", names[0])
	// Deleted files' objects go at once, as the tests of deletion expect;
	// the tests of retention set it.
	c.MustCLI("fs", "set", "--repo", c.Repo, FSName, "retention=0")
	for _, name := range names {
		c.Nodes[name] = &Node{c: c, Name: name, Bind: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
			RPC: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), MountRoot: filepath.Join(dir, "mnt-"+name)}
	}
	addRunDir(c.RunDir)
	t.Cleanup(func() { removeRunDir(c.RunDir); c.cleanup() })
	return c
}

// PlaceIn puts every node in a network namespace of its own on net, at
// fixed ports of its own address. Call it before Start.
func (c *Cluster) PlaceIn(net *Net) {
	for _, name := range sortedNames(c.Nodes) {
		n := c.Nodes[name]
		n.Host = net.Host(name)
		n.Bind, n.RPC = n.Host.IP+":7946", n.Host.IP+":7956"
	}
}

func sortedNames(m map[string]*Node) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Start starts the named nodes, each joining those already running, and
// waits until each has mounted fs1.
func (c *Cluster) Start(names ...string) {
	c.t.Helper()
	for _, name := range names {
		c.Nodes[name].Start()
	}
}

// Start runs the node and waits for its mount.
func (n *Node) Start() {
	c := n.c
	c.t.Helper()
	if n.Host != nil {
		n.wrap = n.Host.Wrap()
	}
	args := append([]string{"node", "--name", n.Name, "--bind", n.Bind, "--rpc", n.RPC, "--repo", c.Repo,
		"--mount-root", n.MountRoot, "--key-file", c.KeyFile, "--lease", "2s"}, n.Args...) // a short lease: quick takeovers
	var join []string
	for _, o := range c.Nodes {
		if o != n && o.running() {
			join = append(join, o.Bind)
		}
	}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	env := append(append(append([]string(nil), c.Env...), n.Env...), "CASCADEFS_RUN_DIR="+c.RunDir)
	startsBefore := nodeStarts(n.Log())
	n.start(c.t, args, env, n.logPath())
	deadline := time.Now().Add(30 * time.Second)
	sock := filepath.Join(c.RunDir, FSName+"@"+n.Name+".sock")
	// "node started" comes once its first look at the repository is done:
	// what it owns has its session (and its epoch) by then.
	for !answers(sock) || !mountedAt(n.M("")) || nodeStarts(n.Log()) == startsBefore {
		select {
		case <-n.done:
			c.t.Fatalf("node %s exited at start:\n%s", n.Name, n.Log())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("node %s has not mounted %s after 30s:\n%s", n.Name, FSName, n.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeStarts counts "node started" lines, logged as text or as JSON.
func nodeStarts(log string) int {
	return strings.Count(log, `msg="node started"`) + strings.Count(log, `"msg":"node started"`)
}

// Stop sends SIGTERM and waits for a clean exit.
func (n *Node) Stop() {
	n.c.t.Helper()
	if n.cmd != nil && !n.terminate(30*time.Second) {
		n.c.t.Errorf("node %s ignored SIGTERM for 30s", n.Name)
	}
}

func (n *Node) logPath() string { return filepath.Join(n.c.Dir, n.Name+".log") }

// Log returns the node's log so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.logPath())
	return string(b)
}

// M is a path inside the node's mount of fs1.
func (n *Node) M(rel string) string { return filepath.Join(n.MountRoot, FSName, rel) }

// B is a path inside the shared backing directory.
func (c *Cluster) B(rel string) string { return filepath.Join(c.Backing, rel) }

// CLI runs a cascadefs command on this host.
func (c *Cluster) CLI(args ...string) (stdout, stderr string, err error) {
	return runCLI(c.t, append(c.Env, "CASCADEFS_RUN_DIR="+c.RunDir), args)
}

// MustCLI runs a command that must succeed.
func (c *Cluster) MustCLI(args ...string) string {
	c.t.Helper()
	return mustCLI(c.t, append(c.Env, "CASCADEFS_RUN_DIR="+c.RunDir), args)
}

// ArchiveObjects lists the objects in the cluster's archive.
func (c *Cluster) ArchiveObjects() []string { return ArchiveObjects(c.t, c.Archive, c.Env) }

func (c *Cluster) cleanup() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		if n.cmd != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.terminate(15 * time.Second) }()
		}
	}
	wg.Wait()
	for _, n := range c.Nodes {
		for i := 0; i < 10; i++ { // dead mounts of killed nodes, maybe stacked
			under := mountsUnder(n.MountRoot)
			if len(under) == 0 {
				break
			}
			for _, p := range under {
				unmountDetach(p)
			}
		}
		if c.t.Failed() {
			c.t.Logf("node %s log:\n%s", n.Name, n.Log())
		}
	}
}

// mountsUnder lists the mount points below dir.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], filepath.Clean(dir)+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// answers reports whether a control socket accepts connections.
func answers(sock string) bool {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err == nil {
		conn.Close()
	}
	return err == nil
}

func mountedAt(p string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return bytes.Contains(b, []byte(" "+filepath.Clean(p)+" "))
}
