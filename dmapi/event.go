// Package dmapi holds the DMAPI-style model: events with tokens, the
// session that queues them (dedupe, admission) and answers them, and the
// per-file DM rights. Its only I/O is DropReference's fsync of the file
// whose record it removes; handlers do the rest.
package dmapi

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// Type is the kind of an event.
type Type uint8

const (
	// Read: a reader needs a migrated region (synchronous).
	Read Type = iota + 1
	// Write: a writer needs the whole file resident before changing it (synchronous).
	Write
	// Truncate: like Write, for a size change (synchronous).
	Truncate
	// Destroy: a stub was deleted; its archive object must go (asynchronous, durable).
	Destroy
)

func (t Type) String() string {
	switch t {
	case Read:
		return "READ"
	case Write:
		return "WRITE"
	case Truncate:
		return "TRUNCATE"
	case Destroy:
		return "DESTROY"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Event is one DM event. Its token names it uniquely, so that answering or
// re-sending it is idempotent.
type Event struct {
	Token  string `json:"token"`
	Type   Type   `json:"type"`
	FS     string `json:"fs"`
	Path   string `json:"path"` // relative to the backing directory
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`        // < 0: to the end of the file
	Key    string `json:"key,omitempty"` // archive object (Destroy)
	// Handle names the file by identity (stub.HandleOf), so that a rename
	// between the raise and the recall does not lose it; Path is then only
	// for logs and a fallback.
	Handle []byte `json:"handle,omitempty"`
	// Node raised the event (shown in status); empty for a single node.
	Node string `json:"node,omitempty"`
	// Priority orders the session's queue; the zero value is a reader's
	// (so are events from nodes that do not send one).
	Priority Priority `json:"priority,omitempty"`
	// UID is the user the event is raised for (the reader's; 0 for root
	// and the daemon's own work): workers and the recall rate are shared
	// fairly between users.
	UID uint32 `json:"uid,omitempty"`
	// Serve, on the node that raised a READ, takes its bytes from memory
	// once verified (see Serve); nil elsewhere.
	Serve *Serve `json:"-"`
}

// Priority is who waits for an event: a user's read goes before an
// admin's bulk recall, which goes before background work.
type Priority uint8

const (
	// PriorityReader: a reader through the mount waits (the default).
	PriorityReader Priority = iota
	// PriorityAdmin: `cascadefs recall` and other bulk admin work.
	PriorityAdmin
	// PriorityBackground: work nobody waits for.
	PriorityBackground
)

func (p Priority) String() string {
	switch p {
	case PriorityReader:
		return "reader"
	case PriorityAdmin:
		return "admin"
	case PriorityBackground:
		return "background"
	}
	return fmt.Sprintf("priority(%d)", uint8(p))
}

func (e *Event) String() string {
	return fmt.Sprintf("%s %s %s [%d,+%d] token=%s", e.Type, e.FS, e.Path, e.Offset, e.Length, e.Token)
}

// dedupeKey identifies the work an event asks for: two readers of the same
// region of the same file share one recall; writes and truncates of a file
// all need the whole file.
type dedupeKey struct {
	ino    uint64
	whole  bool
	offset int64
	length int64
	object string
	token  string // an event that serves its own reader is shared with none
}

func (e *Event) dedupeKey() dedupeKey {
	if e.Type == Destroy {
		return dedupeKey{object: e.Key}
	}
	if e.Serve != nil {
		return dedupeKey{token: e.Token}
	}
	if e.Type == Read {
		return dedupeKey{ino: e.Ino, offset: e.Offset, length: e.Length, whole: e.Length < 0 && e.Offset == 0}
	}
	return dedupeKey{ino: e.Ino, whole: true, length: -1}
}

var (
	tokenPrefix = func() uint32 {
		var b [4]byte
		rand.Read(b[:])
		return binary.LittleEndian.Uint32(b[:])
	}()
	tokenSeq atomic.Uint64
)

// NewToken returns a token unique across processes and restarts.
func NewToken() string {
	return fmt.Sprintf("%08x-%d", tokenPrefix, tokenSeq.Add(1))
}
