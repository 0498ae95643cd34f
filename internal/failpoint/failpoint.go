// Package failpoint holds named points in the daemon where a test makes
// a crash or race window happen on purpose: pause the goroutine, fail the
// call, stop the whole process, or kill it, at the Nth time the point is
// reached.
//
// Points exist only in test builds (go build -tags failpoints; the tests,
// make crash and make protections build so): a root daemon must never
// stop or kill itself because of its environment. In other builds Hit is
// an empty function and CASCADEFS_FAILPOINTS is ignored, with a warning.
// In test builds points are off and cost one load of a bool unless the
// environment enables them:
//
//	CASCADEFS_FAILPOINTS="migrate-before-punch=kill,recall-after-write=pause@3"
//
// Actions: pause (this goroutine waits until the test removes the file
// DIR/NAME.paused, DIR from CASCADEFS_FAILPOINT_DIR), error (the call
// fails with ErrInjected), stop (SIGSTOP to the whole process, as a long
// GC pause or a frozen VM would; the test sends SIGCONT), kill (SIGKILL).
// "@N" acts on the Nth hit only (default: every hit); "@N+" on the Nth
// and every later one. A "once-" prefix (once-kill@1) makes the action
// happen in one process only, the first to create DIR/NAME.fired: armed
// on every node, the point fires on whichever gets there first and the
// others run on, so a race won by any node is still hit.
package failpoint

import "errors"

// The points, where they are and what a crash there must not lose.
const (
	MigrateAfterUpload     = "migrate-after-upload"     // object and checksums uploaded, premigrated record not written
	MigrateBeforeRecord    = "migrate-before-record"    // copy confirmed under the right (owner and epoch), premigrated record not written
	MigrateAfterPremigrate = "migrate-after-premigrate" // premigrated record written, release not begun
	MigrateReleaseHeld     = "migrate-release-held"     // new opens held for a release, record unchanged
	MigrateAfterConfirm    = "migrate-after-confirm"    // right, shield and holds confirmed, record still premigrated
	MigrateBeforePunch     = "migrate-before-punch"     // migrated record durable, nothing punched
	MigrateInsidePunch     = "migrate-inside-punch"     // first half of the data punched
	RecallBeforeWrite      = "recall-before-write"      // right held and checked, verified bytes not yet written
	RecallAfterWrite       = "recall-after-write"       // verified bytes written, not synced, record unchanged
	RecallBeforeRecord     = "recall-before-record"     // whole file recalled and synced, record still migrated
	DestroyBeforeUnlink    = "destroy-before-unlink"    // DESTROY entry prepared, the stub's name not yet removed
	DestroyBeforeDelete    = "destroy-before-delete"    // entry ready, object not yet deleted
	TakeoverBeforeCommit   = "takeover-before-commit"   // about to claim a failed owner's filesystem, nothing written
	HandoverAfterStop      = "handover-after-stop"      // old owner's session stopped, ownership not yet moved
	LeaseRenew             = "lease-renew"              // a node is about to renew its lease (error: the repository did not answer)
	RepoInUpdate           = "repo-in-update"           // inside a bbolt write transaction, the file lock held
	UndeleteAfterStub      = "undelete-after-stub"      // hidden stub made and synced, its queue entry still names the old file
	UndeleteBeforeRename   = "undelete-before-rename"   // the entry names the hidden stub, not yet renamed into place
	UndeleteBeforeForget   = "undelete-before-forget"   // the stub in place, its queue entry not yet removed
	RebuildBeforeComplete  = "rebuild-before-complete"  // the rebuilt tree made and synced, not yet marked complete
	RebuildInsidePlace     = "rebuild-inside-place"     // moving the complete tree into place, entry by entry
	CopyPutDone            = "copy-put-done"            // the first archive copy holds an object, the others may not yet
	RepairAfterData        = "repair-after-data"        // a bad copy's object written again, its checksums and description not yet
)

// All lists every point, for the crash suite's random picks.
var All = []string{MigrateAfterUpload, MigrateBeforeRecord, MigrateAfterPremigrate, MigrateReleaseHeld, MigrateAfterConfirm, MigrateBeforePunch, MigrateInsidePunch,
	RecallBeforeWrite, RecallAfterWrite, RecallBeforeRecord, DestroyBeforeUnlink, DestroyBeforeDelete,
	TakeoverBeforeCommit, HandoverAfterStop, LeaseRenew, RepoInUpdate, UndeleteAfterStub, UndeleteBeforeRename, UndeleteBeforeForget,
	RebuildBeforeComplete, RebuildInsidePlace, CopyPutDone, RepairAfterData}

// ErrInjected is what a point set to "error" fails with.
var ErrInjected = errors.New("failpoint: injected failure")
