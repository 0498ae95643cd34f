package repo

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Memory is a repository in memory that follows the ownership rules of
// one engine, for the ownership simulator and unit tests. It is not safe
// for concurrent use (the simulator runs one step at a time). Each process
// talks to it through a Handle, with its own clock and identity:
//
//   - Bolt rules: a lease is a LeaseRecord, judged by the caller's own
//     LeaseJudge (as bbolt processes judge the file's records);
//   - Etcd rules: a lease is granted for whole seconds and lapses by the
//     servers' clock unless kept alive; a Claim needs the owner's lease
//     gone (as the etcd engine's transaction does).
type Memory struct {
	Etcd   bool                 // etcd's rules, else bbolt's
	Server func() time.Duration // the etcd servers' clock

	fs     map[string]FS
	leases map[string]LeaseRecord // bbolt
	grants map[string]grant       // etcd: node -> its lease key's lease
	nextID int64
}

// grant is an etcd lease bound to a node's lease key.
type grant struct {
	id      int64
	ttl     time.Duration // as granted: whole seconds
	expires time.Duration // by the servers' clock
	askedMs int64         // the node's own TTL, stored as the key's value
}

// NewMemory makes an empty repository with etcd's rules or bbolt's.
func NewMemory(etcd bool, server func() time.Duration) *Memory {
	return &Memory{Etcd: etcd, Server: server, fs: map[string]FS{}, leases: map[string]LeaseRecord{}, grants: map[string]grant{}}
}

// Handle is one process's connection to a Memory repository.
type Handle struct {
	m      *Memory
	holder string
	judge  LeaseJudge
	ids    map[string]int64 // etcd: the leases this process was granted
}

// Handle opens a connection for a process identified by holder, whose
// clock is now.
func (m *Memory) Handle(holder string, now func() time.Duration) *Handle {
	return &Handle{m: m, holder: holder, judge: LeaseJudge{Now: now}, ids: map[string]int64{}}
}

// AddFS adds a filesystem.
func (h *Handle) AddFS(fs FS) error {
	if _, ok := h.m.fs[fs.Name]; ok {
		return fmt.Errorf("filesystem %q: %w", fs.Name, ErrExists)
	}
	h.m.fs[fs.Name] = fs
	return nil
}

func (h *Handle) GetFS(name string) (FS, error) {
	fs, ok := h.m.fs[name]
	if !ok {
		return FS{}, fmt.Errorf("filesystem %q: %w", name, ErrNotFound)
	}
	return fs, nil
}

func (h *Handle) ListFS() ([]FS, error) {
	var out []FS
	for _, fs := range h.m.fs {
		out = append(out, fs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// expire drops the etcd leases whose time ran out at the servers.
func (m *Memory) expire() {
	now := m.Server()
	for node, g := range m.grants {
		if now >= g.expires {
			delete(m.grants, node)
		}
	}
}

func (h *Handle) Renew(node string, ttl time.Duration) error {
	m := h.m
	if !m.Etcd {
		m.leases[node] = m.leases[node].Renew(h.holder, ttl)
		return nil
	}
	m.expire()
	if g, ok := m.grants[node]; ok && g.id == h.ids[node] {
		g.expires = m.Server() + g.ttl // keep-alive
		m.grants[node] = g
		return nil
	}
	// Expired (or another process's): a new lease, as the etcd engine
	// grants when its keep-alive finds none.
	m.nextID++
	secs := (ttl + time.Second - 1) / time.Second * time.Second
	g := grant{id: m.nextID, ttl: max(secs, time.Second), askedMs: ttl.Milliseconds()}
	g.expires = m.Server() + g.ttl
	m.grants[node] = g
	h.ids[node] = g.id
	return nil
}

func (h *Handle) DropLease(node string) error {
	m := h.m
	if !m.Etcd {
		if l, ok := m.leases[node]; ok {
			m.leases[node] = l.Drop()
		}
		return nil
	}
	delete(m.grants, node)
	delete(h.ids, node)
	return nil
}

func (h *Handle) Leases() ([]NodeLease, error) {
	m := h.m
	var out []NodeLease
	if m.Etcd {
		m.expire()
		for node, g := range m.grants {
			out = append(out, NodeLease{Node: node, TTL: time.Duration(g.askedMs) * time.Millisecond, Live: true})
		}
	} else {
		for node, l := range m.leases {
			if !l.Dropped {
				out = append(out, NodeLease{Node: node, TTL: l.TTL(), Live: h.judge.Live(node, l)})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// live judges node's lease as this handle's Claim does.
func (h *Handle) live(node string) (bool, error) {
	m := h.m
	if m.Etcd {
		m.expire()
		_, ok := m.grants[node]
		return ok, nil
	}
	l, ok := m.leases[node]
	return ok && h.judge.Live(node, l), nil
}

func (h *Handle) Claim(name, node, from, reason string) (FS, error) {
	fs, err := h.GetFS(name)
	if err != nil {
		return FS{}, err
	}
	if err := claimFrom(&fs, node, from, reason, func() (bool, error) { return h.live(from) }); err != nil {
		return FS{}, err
	}
	h.m.fs[name] = fs
	return fs, nil
}

func (h *Handle) Move(name, from string, epoch uint64, to, reason string) (FS, error) {
	fs, err := h.GetFS(name)
	if err != nil {
		return FS{}, err
	}
	if err := moveFrom(&fs, from, epoch, to, reason); err != nil {
		return FS{}, err
	}
	h.m.fs[name] = fs
	return fs, nil
}

func (h *Handle) Confirm(name, node string, epoch uint64) error {
	return confirm(context.Background(), memoryFS{h}, name, node, epoch)
}

// memoryFS gives a Handle the repository's GetFS (the simulator's calls
// take no context: one step runs at a time).
type memoryFS struct{ h *Handle }

func (m memoryFS) GetFS(_ context.Context, name string) (FS, error) { return m.h.GetFS(name) }
