// Package repo is the cluster's repository (the patent's system data
// repository): managed filesystems and their settings, the owner of each
// filesystem's DM session with its epoch, locks, the nodes' RPC addresses
// and the durable queue of asynchronous events. Repository is the small
// interface the rest of cascadefs uses, with two engines: Bolt (one bbolt
// file, opened for each short transaction under its file lock: a single
// node or nodes on one host) and Etcd (clusters across machines; leases
// and claims as transactions). Memory runs both engines' lease rules for
// the ownership simulator. No secret is ever stored here.
package repo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Sentinel errors; each is wrapped with the name it concerns.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrNoRepo   = errors.New("no repository")
	ErrCorrupt  = errors.New("repository is corrupt")
	ErrLocked   = errors.New("repository is locked")
	// ErrOwnerChanged: the owner is not the one an ownership change expected.
	ErrOwnerChanged = errors.New("owner changed")
	// ErrLeaseLive: the owner still holds a live lease; its filesystems stay.
	ErrLeaseLive = errors.New("owner's lease is live")
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

// setOwner makes node the owner ("" for none), at the next epoch when
// there is one, and notes why in the capped history. Every engine changes
// owners through it alone.
func (f *FS) setOwner(node, reason string) {
	if node != "" {
		f.Epoch++
	}
	f.Takeovers = append(f.Takeovers, Takeover{At: time.Now(), From: f.Owner, To: node, Epoch: f.Epoch, Reason: reason})
	if len(f.Takeovers) > keepTakeovers {
		f.Takeovers = f.Takeovers[len(f.Takeovers)-keepTakeovers:]
	}
	f.Owner = node
}

// notOwner is the error of an ownership change or a fence that expected
// node at epoch.
func notOwner(fs FS, node string, epoch uint64) error {
	return fmt.Errorf("filesystem %q: owner is %q at epoch %d, not %q at %d: %w", fs.Name, fs.Owner, fs.Epoch, node, epoch, ErrOwnerChanged)
}

// confirm is Confirm by a read of the filesystem's record.
func confirm(ctx context.Context, r interface {
	GetFS(context.Context, string) (FS, error)
}, name, node string, epoch uint64) error {
	fs, err := r.GetFS(ctx, name)
	if err != nil {
		return err
	}
	if fs.Owner != node || fs.Epoch != epoch {
		return notOwner(fs, node, epoch)
	}
	return nil
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

// NodeLease is a node's lease as this process judges it. A node's lease
// covers every filesystem it owns: while it is live, nobody takes them.
type NodeLease struct {
	Node string        `json:"node"`
	TTL  time.Duration `json:"ttl"`
	Live bool          `json:"live"`
}

// Repository is the shared configuration store. Every method is one short
// transaction, bounded by the engine's timeout and by ctx; none keeps the
// store open between calls, and none compares wall clocks across
// processes.
type Repository interface {
	// Close ends the engine's connections (nothing for bbolt, which
	// keeps none between calls).
	Close() error

	AddFS(ctx context.Context, fs FS) error
	GetFS(ctx context.Context, name string) (FS, error)
	ListFS(ctx context.Context) ([]FS, error)
	// UpdateFS changes a filesystem's configuration atomically: fn sees the
	// current value. Owner and Epoch change only through Claim and Move.
	UpdateFS(ctx context.Context, name string, fn func(*FS) error) error
	RemoveFS(ctx context.Context, name string) error

	PutNode(ctx context.Context, n Node) error
	ListNodes(ctx context.Context) ([]Node, error)

	// Renew renews node's lease for ttl (creating it).
	Renew(ctx context.Context, node string, ttl time.Duration) error
	// DropLease ends node's lease at once (a clean stop).
	DropLease(ctx context.Context, node string) error
	// Leases reports every node's lease.
	Leases(ctx context.Context) ([]NodeLease, error)

	// Claim makes node the owner of a filesystem at the next epoch, if its
	// owner is still from and from holds no live lease (no check when from
	// is "" or node itself). ErrOwnerChanged or ErrLeaseLive otherwise.
	Claim(ctx context.Context, name, node, from, reason string) (FS, error)
	// Move changes the owner from (at epoch) to to: to "" leaves the
	// filesystem without owner, another node gets the next epoch.
	// ErrOwnerChanged if from no longer owns it at epoch.
	Move(ctx context.Context, name, from string, epoch uint64, to, reason string) (FS, error)
	// Confirm checks, now, that node owns the filesystem at epoch
	// (ErrOwnerChanged otherwise): the fence before every commit.
	Confirm(ctx context.Context, name, node string, epoch uint64) error

	// The durable queue of asynchronous events of a filesystem: opaque
	// entries by token, kept until done.
	PutEntry(ctx context.Context, fs, token string, data []byte) error
	GetEntry(ctx context.Context, fs, token string) ([]byte, error)
	DeleteEntry(ctx context.Context, fs, token string) error
	ListEntries(ctx context.Context, fs string) (map[string][]byte, error)
}

// Entries is the event queue of one filesystem (a migrate.Store).
type Entries struct {
	Repo Repository
	FS   string
}

// Its calls are bounded by the engine's timeout (the DESTROY queue's
// store takes no context).
func (e Entries) Put(token string, data []byte) error {
	return e.Repo.PutEntry(context.Background(), e.FS, token, data)
}
func (e Entries) Get(token string) ([]byte, error) {
	return e.Repo.GetEntry(context.Background(), e.FS, token)
}
func (e Entries) Delete(token string) error {
	return e.Repo.DeleteEntry(context.Background(), e.FS, token)
}
func (e Entries) List() (map[string][]byte, error) {
	return e.Repo.ListEntries(context.Background(), e.FS)
}

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

// IsEtcd: spec names an etcd cluster rather than a bbolt directory.
func IsEtcd(spec string) bool { return strings.HasPrefix(spec, EtcdScheme) }

// OpenURL opens the repository spec names: etcd://HOST:PORT[,...] (the
// etcd engine) or a directory (bbolt).
// log (nil: none) hears what the engine does on its own.
func OpenURL(spec string, log *slog.Logger) (Repository, error) {
	if IsEtcd(spec) {
		return OpenEtcd(spec)
	}
	return Open(spec, log)
}

// CreateURL is OpenURL that first creates a bbolt repository if the
// directory has none (an etcd cluster needs no creation).
func CreateURL(spec string, log *slog.Logger) (Repository, error) {
	if IsEtcd(spec) {
		return OpenEtcd(spec)
	}
	return Create(spec, log)
}

// Engine names the engine of r, for status.
func Engine(r Repository) string {
	switch r.(type) {
	case *Etcd:
		return "etcd"
	case *Bolt:
		return "bbolt"
	}
	return fmt.Sprintf("%T", r)
}
