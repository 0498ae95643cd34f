package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Etcd is a real etcd cluster of server processes on loopback, each with
// its own data directory, stopped when the test ends.
type Etcd struct {
	Members []*EtcdMember
	bin     string
}

// EtcdMember is one etcd server process.
type EtcdMember struct {
	Name   string
	Client string // HOST:PORT
	Host   *Host  // its network namespace (nil: loopback)
	cmd    *exec.Cmd
	done   chan struct{}
	args   []string
	log    string
	health *http.Client // nil: plain HTTP
}

// EtcdBinary finds the pinned etcd server ($CASCADEFS_ETCD or .tools/etcd).
func EtcdBinary() string {
	if p := os.Getenv("CASCADEFS_ETCD"); p != "" {
		return p
	}
	return filepath.Join(RepoRoot(), ".tools", "etcd")
}

// StartEtcd starts a cluster of n members and waits until every member is
// healthy. Without the binary the test fails under `make test`.
func StartEtcd(t testing.TB, n int) *Etcd {
	t.Helper()
	return StartEtcdIn(t, nil, n)
}

// StartEtcdIn starts the cluster with each member in a network namespace
// of its own on net (nil: on loopback).
func StartEtcdIn(t testing.TB, net *Net, n int) *Etcd {
	t.Helper()
	bin := EtcdBinary()
	if _, err := os.Stat(bin); err != nil {
		Missing(t, "etcd server not found at %s (run `make tools`)", bin)
	}
	e := &Etcd{}
	var initial []string
	peers, clients := make([]string, n), make([]string, n)
	hosts := make([]*Host, n)
	for i := range n {
		if net != nil {
			hosts[i] = net.Host(fmt.Sprintf("etcd%d", i))
			peers[i], clients[i] = hosts[i].IP+":2380", hosts[i].IP+":2379"
		} else {
			peers[i], clients[i] = fmt.Sprintf("127.0.0.1:%d", FreePort(t)), fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		}
		initial = append(initial, fmt.Sprintf("m%d=http://%s", i, peers[i]))
	}
	dir := t.TempDir()
	for i := range n {
		m := &EtcdMember{Name: fmt.Sprintf("m%d", i), Client: clients[i], Host: hosts[i],
			log: filepath.Join(dir, fmt.Sprintf("m%d.log", i))}
		m.args = []string{"--name", m.Name, "--data-dir", filepath.Join(dir, m.Name),
			"--listen-client-urls", "http://" + m.Client, "--advertise-client-urls", "http://" + m.Client,
			"--listen-peer-urls", "http://" + peers[i], "--initial-advertise-peer-urls", "http://" + peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "cascadefs-test", "--log-level", "warn"}
		m.start(t, bin)
		e.Members = append(e.Members, m)
		e.bin = bin
	}
	t.Cleanup(func() {
		for _, m := range e.Members {
			m.Kill()
		}
	})
	for _, m := range e.Members {
		m.waitHealthy(t)
	}
	return e
}

func (m *EtcdMember) start(t testing.TB, bin string) {
	t.Helper()
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{bin}, m.args...)
	if m.Host != nil {
		argv = append(m.Host.Wrap(), argv...)
	}
	m.cmd = exec.Command(argv[0], argv[1:]...)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start etcd %s: %v", m.Name, err)
	}
	m.done = make(chan struct{})
	go func(cmd *exec.Cmd, f *os.File, done chan struct{}) { cmd.Wait(); f.Close(); close(done) }(m.cmd, logf, m.done)
}

func (m *EtcdMember) waitHealthy(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		client, scheme := healthClient, "http://"
		if m.health != nil {
			client, scheme = m.health, "https://"
		}
		resp, err := client.Get(scheme + m.Client + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(m.log)
			t.Fatalf("etcd %s at %s not healthy after 60s:\n%s", m.Name, m.Client, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// healthClient: a member without quorum answers /health only when it
// has one; each try is bounded.
var healthClient = &http.Client{Timeout: 2 * time.Second}

// Kill stops the member at once (kill -9).
func (m *EtcdMember) Kill() {
	if m.cmd != nil && m.cmd.Process != nil {
		m.cmd.Process.Kill()
		<-m.done
	}
}

// Restart starts killed members again on their data directories, then
// waits until each is healthy (a member alone has no quorum: start them
// all first).
func (e *Etcd) Restart(t testing.TB, members ...*EtcdMember) {
	t.Helper()
	for _, m := range members {
		for i, a := range m.args {
			if a == "--initial-cluster-state" {
				m.args[i+1] = "existing"
			}
		}
		m.start(t, e.bin)
	}
	for _, m := range members {
		m.waitHealthy(t)
	}
}

// URL is the repository URL of the cluster: etcd://HOST:PORT,...
func (e *Etcd) URL() string {
	var hosts []string
	for _, m := range e.Members {
		hosts = append(hosts, m.Client)
	}
	return "etcd://" + strings.Join(hosts, ",")
}
