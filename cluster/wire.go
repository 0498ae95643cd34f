package cluster

import (
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/fusefs"
	"github.com/cascadefs/cascadefs/migrate"
)

// Node RPC paths and their messages.
const (
	pathPing       = "/ping"
	pathEvent      = "/event"
	pathMigrate    = "/migrate"
	pathSession    = "/session"
	pathHold       = "/hold"
	pathUnhold     = "/unhold"
	pathInvalidate = "/invalidate"
	pathWake       = "/wake"
	pathTakeover   = "/takeover"
	pathHandover   = "/handover"
	pathSpace      = "/space"
	pathReconcile  = "/reconcile"
	pathScrub      = "/scrub"
	pathUndelete   = "/undelete"
	pathImport     = "/import"
	pathCancel     = "/cancel"
)

// codeNotOwner: the called node does not run the filesystem's DM session
// (any more); the caller looks the owner up again.
const (
	codeNotOwner   = "not-owner"
	codeBadRequest = "bad-request" // a path or event that could leave the backing tree
	codeCanceled   = "canceled"    // the event was cancelled by an admin
)

type pingReply struct {
	Name string `json:"name"`
}

type eventReq struct {
	FS    string      `json:"fs"`
	Event dmapi.Event `json:"event"`
}

type migrateReq struct {
	FS         string `json:"fs"`
	Path       string `json:"path"`
	Ino        uint64 `json:"ino,omitempty"` // the file found at Path (0: any)
	Premigrate bool   `json:"premigrate"`
}

type cancelReq struct {
	FS      string               `json:"fs"`
	Request daemon.CancelRequest `json:"request"`
}

type cancelReply struct {
	Events []dmapi.Event `json:"events"`
}

// ownerReq is a call that runs on a filesystem's owner: an admin's
// request, forwarded by the node the admin asked.
type ownerReq[T any] struct {
	FS      string `json:"fs"`
	Request T      `json:"request"`
}

// ownerReply is its answer: what it gave, and its own error (a refusal
// of the request, final), apart from the call's (not the owner, not
// reached: looked up again).
type ownerReply[T any] struct {
	Result T      `json:"result"`
	Error  string `json:"error,omitempty"`
}

type reconcileReq struct {
	FS      string                   `json:"fs"`
	Options migrate.ReconcileOptions `json:"options"`
}

type reconcileReply struct {
	Report *migrate.ReconcileReport `json:"report,omitempty"`
	Error  string                   `json:"error,omitempty"`
}

type migrateReply struct {
	Result migrate.Result `json:"result"`
	Error  string         `json:"error,omitempty"`
	Busy   bool           `json:"busy,omitempty"` // the release was skipped: open somewhere
}

type spaceReq struct {
	FS   string `json:"fs"`
	Need int64  `json:"need"` // 0: the last measurement; else an out-of-space event
}

type spaceReply struct {
	Space   dmapi.Space `json:"space"`
	NoSpace bool        `json:"no_space,omitempty"` // the monitor could not free enough
}

type fsReq struct {
	FS string `json:"fs"`
}

type sessionReply = daemon.SessionInfo

type holdReq struct {
	FS     string `json:"fs"`
	Ino    uint64 `json:"ino"`
	Token  string `json:"token"`
	WaitMs int64  `json:"wait_ms"`
	// LeaseMs: the hold ends by itself this long after it was granted
	// (0: the default), should the releaser vanish.
	LeaseMs int64 `json:"lease_ms,omitempty"`
}

type invalidateReq struct {
	FS      string          `json:"fs"`
	Ino     uint64          `json:"ino,omitempty"`     // written data, at close
	Changes []fusefs.Change `json:"changes,omitempty"` // attributes and names, batched
}
