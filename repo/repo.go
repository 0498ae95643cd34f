// Package repo is the cluster's repository (the patent's system data
// repository): managed filesystems and their settings, the owner of each
// filesystem's DM session with its epoch, locks, the nodes' RPC addresses
// and the durable queue of asynchronous events. Repository is the small
// interface the rest of cascadefs uses; Bolt is its first engine (one bbolt
// file on shared storage); an etcd engine can follow for clusters across
// machines. No secret is ever stored here.
package repo

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors; each is wrapped with the name it concerns.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrNoRepo   = errors.New("no repository")
	ErrCorrupt  = errors.New("repository is corrupt")
	ErrBusy     = errors.New("repository is busy")
)

// FS is a managed filesystem.
type FS struct {
	Name    string `json:"name"`
	Backing string `json:"backing"` // the same path on every node
	Archive string `json:"archive"` // archive URL, never with credentials
	// Candidates may serve the filesystem; empty means every node.
	Candidates []string `json:"candidates,omitempty"`
	// Owner runs the DM session, at Epoch; "" while nobody does.
	Owner    string            `json:"owner,omitempty"`
	Epoch    uint64            `json:"epoch"`
	Settings map[string]string `json:"settings,omitempty"`
	// Takeovers are the latest changes of owner, newest last.
	Takeovers []Takeover `json:"takeovers,omitempty"`
}

// Takeover is one change of a filesystem's owner.
type Takeover struct {
	At     time.Time `json:"at"`
	From   string    `json:"from,omitempty"`
	To     string    `json:"to"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
}

// keepTakeovers bounds the history kept per filesystem.
const keepTakeovers = 10

// SetOwner makes node the owner at the next epoch and notes why.
func (f *FS) SetOwner(node, reason string) {
	f.Epoch++
	f.Takeovers = append(f.Takeovers, Takeover{At: time.Now(), From: f.Owner, To: node, Epoch: f.Epoch, Reason: reason})
	if len(f.Takeovers) > keepTakeovers {
		f.Takeovers = f.Takeovers[len(f.Takeovers)-keepTakeovers:]
	}
	f.Owner = node
}

// IsCandidate reports whether node may serve the filesystem.
func (f *FS) IsCandidate(node string) bool {
	if len(f.Candidates) == 0 {
		return true
	}
	for _, c := range f.Candidates {
		if c == node {
			return true
		}
	}
	return false
}

// Node is a node as it last registered.
type Node struct {
	Name string    `json:"name"`
	Bind string    `json:"bind"` // Serf address
	RPC  string    `json:"rpc"`  // node RPC address
	Seen time.Time `json:"seen"` // last registration
}

// Lock is a named lock: who holds it since when.
type Lock struct {
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
}

// Repository is the shared configuration store. Every method is one short
// transaction; none keeps the store open between calls.
type Repository interface {
	AddFS(fs FS) error
	GetFS(name string) (FS, error)
	ListFS() ([]FS, error)
	// UpdateFS changes a filesystem atomically: fn sees the current value.
	UpdateFS(name string, fn func(*FS) error) error
	RemoveFS(name string) error

	PutNode(n Node) error
	ListNodes() ([]Node, error)

	// TryLock takes the lock if it is free, held by holder already, or
	// older than stale (taken by force); it reports whether holder has it.
	TryLock(name, holder string, stale time.Duration) (bool, error)
	Unlock(name, holder string) error

	// The durable queue of asynchronous events of a filesystem: opaque
	// entries by token, kept until done.
	PutEntry(fs, token string, data []byte) error
	GetEntry(fs, token string) ([]byte, error)
	DeleteEntry(fs, token string) error
	ListEntries(fs string) (map[string][]byte, error)
}

// Entries is the event queue of one filesystem (a migrate.Store).
type Entries struct {
	Repo Repository
	FS   string
}

func (e Entries) Put(token string, data []byte) error { return e.Repo.PutEntry(e.FS, token, data) }
func (e Entries) Get(token string) ([]byte, error)    { return e.Repo.GetEntry(e.FS, token) }
func (e Entries) Delete(token string) error           { return e.Repo.DeleteEntry(e.FS, token) }
func (e Entries) List() (map[string][]byte, error)    { return e.Repo.ListEntries(e.FS) }

// ValidName checks a filesystem or node name: it becomes a path element,
// an object key prefix and a Serf node name.
func ValidName(kind, name string) error {
	if name == "" || len(name) > 64 || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-") {
		return fmt.Errorf("%s name %q: use 1 to 64 letters, digits, '-', '_' or '.'", kind, name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("%s name %q: use 1 to 64 letters, digits, '-', '_' or '.'", kind, name)
		}
	}
	return nil
}
