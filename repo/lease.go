package repo

import (
	"fmt"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
)

// The lease rules of the bbolt engine, in one place: the engine applies
// them to its file, the in-memory engine (Memory) to its maps, so that
// the ownership simulator runs the very rules a cluster on one host does.

// LeaseRecord is a node's lease as stored: renewals count up Term. It
// holds no time: observers judge a lease by their own clocks.
//
// A lease is known by its holder and term together. Holder is the
// renewing process's own identity, and a record is never deleted (a drop
// marks it), so Term never starts again: an observer that last saw term k
// of an earlier process cannot take a restarted process's fresh renewal
// for that same lease, unchanged since, and judge it lapsed.
type LeaseRecord struct {
	Term    uint64 `json:"term"`
	TTLMs   int64  `json:"ttl_ms"`
	Holder  string `json:"holder,omitempty"`
	Dropped bool   `json:"dropped,omitempty"`
}

// Renew is the record after a renewal by holder for ttl.
func (l LeaseRecord) Renew(holder string, ttl time.Duration) LeaseRecord {
	l.Term++
	l.TTLMs = ttl.Milliseconds()
	l.Holder, l.Dropped = holder, false
	if protect.Off(protect.LeaseIdentity) {
		l.Holder = ""
	}
	return l
}

// Drop is the record after its holder dropped it: not live, at once; the
// term goes on counting.
func (l LeaseRecord) Drop() LeaseRecord {
	if protect.Off(protect.LeaseIdentity) {
		return LeaseRecord{Dropped: true} // as when a drop deleted the record
	}
	l.Term++
	l.Dropped = true
	return l
}

// TTL is the lease's time to live.
func (l LeaseRecord) TTL() time.Duration { return time.Duration(l.TTLMs) * time.Millisecond }

// LeaseJudge judges leases for one process, by that process's clock: a
// lease is live until the judge has seen it at one holder and term for
// its whole TTL. A lease first seen now is live (its owner may have
// renewed it just before); a dropped one is not.
type LeaseJudge struct {
	Now func() time.Duration // the judge's clock (clock.Boot in a node)

	mu   sync.Mutex
	seen map[string]sighting
}

// sighting is when the judge first saw a lease at its holder and term.
type sighting struct {
	holder string
	term   uint64
	at     time.Duration
}

// Live judges node's lease record l.
func (j *LeaseJudge) Live(node string, l LeaseRecord) bool {
	if l.Dropped {
		return false
	}
	now := j.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.seen == nil {
		j.seen = map[string]sighting{}
	}
	s, ok := j.seen[node]
	if !ok || s.term != l.Term || s.holder != l.Holder {
		j.seen[node] = sighting{holder: l.Holder, term: l.Term, at: now}
		return true
	}
	return now-s.at < l.TTL()
}

// claimFrom applies Claim's rule to fs: node takes it at the next epoch
// if its owner is still from, and from's lease is not live (asked only
// when from is another node).
func claimFrom(fs *FS, node, from, reason string, fromLive func() (bool, error)) error {
	if fs.Owner != from {
		return fmt.Errorf("filesystem %q: owner is %q, not %q: %w", fs.Name, fs.Owner, from, ErrOwnerChanged)
	}
	if from != "" && from != node && !protect.Off(protect.ClaimLeaseCheck) {
		live, err := fromLive()
		if err != nil {
			return err
		}
		if live {
			return fmt.Errorf("filesystem %q: %s: %w", fs.Name, from, ErrLeaseLive)
		}
	}
	fs.setOwner(node, reason)
	return nil
}

// moveFrom applies Move's rule to fs.
func moveFrom(fs *FS, from string, epoch uint64, to, reason string) error {
	if fs.Owner != from || fs.Epoch != epoch {
		return notOwner(*fs, from, epoch)
	}
	fs.setOwner(to, reason)
	return nil
}
