// Package protect names the protections that keep data safe across
// crashes, pauses and takeovers, each with the test that must fail
// without it. In test builds (-tags failpoints) one can be switched off:
//
//	CASCADEFS_PROTECTION_OFF=right-make-resident
//
// and `make protections` (internal/protect/run) switches each off in
// turn and shows its test fail. In other builds Off is always false.
package protect

// Take runs take, which takes a lock that is protection name, unless
// name is switched off: then nothing is taken and unlock does nothing.
func Take(name string, take func() (unlock func(), err error)) (unlock func(), err error) {
	if Off(name) {
		return func() {}, nil
	}
	return take()
}

// Test is a test that must fail while its protection is off.
type Test struct {
	Pkg string // package path, relative to the module
	Run string // go test -run pattern
}

// Protection is one protection: its switch name, where it is, and what
// fails without it.
type Protection struct {
	Name  string
	Where string
	Tests []Test
}

// The switch names.
const (
	ClaimLeaseCheck   = "claim-lease-check"   // repo: Claim refuses an owner whose lease is live
	LeaseIdentity     = "lease-identity"      // repo (bbolt): a lease is known by holder and term
	LeaseValidity     = "lease-validity"      // owner: act only while the lease is valid by the own clock
	LapseBinding      = "lapse-binding"       // owner: a session from before a lapse commits nothing
	Relinquish        = "relinquish"          // owner: an epoch left without owner is never served again
	QuorumRule        = "quorum-rule"         // owner: a node in a minority gives its filesystems up
	RightRecallWrite  = "right-recall-write"  // recall: verified bytes written under the file's right
	RightMakeResident = "right-make-resident" // recall: a file made resident under the right, looked at again
	RightDestroy      = "right-destroy"       // migrate: the DESTROY queue deletes under the file's right
	ReadShield        = "read-shield"         // fs/migrate: no punch while a node has the file open
	KernelShield      = "kernel-shield"       // fs: the shield outlives a killed daemon's passthrough handles
	DurabilitySync    = "durability-sync"     // migrate/recall: data durable before a record claims it
	StoppedHolderKill = "stopped-holder-kill" // stub: a holder of a right stopped past twice its lease is ended
	ArchiveClock      = "archive-clock"       // migrate: orphan ages by the archive's clock
	RecordBinding     = "record-binding"      // stub: a record is trusted only on its own inode
	BootClock         = "boot-clock"          // cluster: the lease judged by a clock that runs through a suspend
	UndeleteBinding   = "undelete-binding"    // migrate: an undelete's queue entry names the new file before it is in place
	SealData          = "seal-data"           // migrate: uploads sealed with the archive key
	SealNames         = "seal-names"          // namespace: descriptions and journal batches sealed with the archive key
	ObjectLock        = "object-lock"         // archive: uploads to a bucket with object lock are locked for the retention
	NotOurs           = "not-ours"            // migrate: reconcile never takes an object cascadefs did not write for an orphan
)

// All lists every protection and its tests.
var All = []Protection{
	{ClaimLeaseCheck, "repo.claimFrom, the etcd Claim compare", []Test{{"./repo", "^TestOwnershipBolt$"}, {"./cluster/owner", "^TestSimulation$"}}},
	{LeaseIdentity, "repo.LeaseRecord, LeaseJudge", []Test{{"./repo", "^TestLeaseIdentityBolt$"}}},
	{LeaseValidity, "owner.State.Acting", []Test{{"./cluster/owner", "^TestSimulation$"}}},
	{LapseBinding, "owner.State.Acting, ClaimedIn", []Test{{"./cluster/owner", "^TestSimulation$"}, {"./integration", "^TestLapseMeansANewEpochAndNothingOld$"}}},
	{Relinquish, "owner.State.Relinquish", []Test{{"./cluster/owner", "^TestGiveUpRelinquishes$"}}},
	{QuorumRule, "owner.State.Plan (minority)", []Test{{"./cluster/owner", "^TestPlan$"}, {"./integration", "^TestNetnsOwnerCutFromPeers$"}}},
	{RightRecallWrite, "recall fileRecall.write", []Test{{"./integration", "^TestFencingPausedRecallWrite$"}}},
	{RightMakeResident, "stub.UnderRight ForChange (recall, migrate release and stale copy, fusefs setattr)", []Test{{"./integration", "^TestFencingPausedReleaseAfterConfirm$"}}},
	{RightDestroy, "migrate DestroyQueue.fileUse", []Test{{"./integration", "^TestFencingPausedCopyCommit$"}}},
	{ReadShield, "fusefs newHandleMode, migrate release", []Test{{"./integration", "^TestOpenDuringPausedReleaseReadsRightBytes$"}}},
	{KernelShield, "fusefs kernelShield", []Test{{"./integration", "^TestReaderOutlivesKilledDaemon$"}}},
	{DurabilitySync, "migrate copy and release, recall commit", []Test{{"./integration", "^TestDurableBeforeClaimed$"}}},
	{StoppedHolderKill, "stub lockByte", []Test{{"./integration", "^TestWriterEndsAStoppedRightHolder$"}}},
	{ArchiveClock, "migrate Reconciler.Run", []Test{{"./migrate", "^TestReconcileJudgesAgesByTheArchiveClock$"}}},
	{RecordBinding, "stub bound, WriteRecord", []Test{{"./integration", "^TestCopiedRecordNotTrusted$"}}},
	{BootClock, "internal/clock Boot (cluster now)", []Test{{"./cluster/owner", "^TestSimulation$"}}},
	{UndeleteBinding, "migrate DestroyQueue.Undelete", []Test{{"./integration", "^TestUndeletedFileKeepsItsObjectAfterACrash$"}}},
	{SealData, "migrate Migrator.objectBody", []Test{{"./recall", "^TestSealedObjects$"}, {"./integration", "^TestSealedArchive$"}}},
	{SealNames, "namespace Meta.Put, Journal.flush", []Test{{"./integration", "^TestSealedArchive$"}}},
	{ObjectLock, "archive S3.Put", []Test{{"./archive", "^TestS3ObjectLock$"}, {"./integration", "^TestObjectLock$"}}},
	{NotOurs, "migrate Reconciler.Run (ours)", []Test{{"./integration", "^TestImport$"}}},
}
