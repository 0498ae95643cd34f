// Package stub is a managed file's state on the backing filesystem: the
// stub record (an xattr bound to its inode), residency, punching, and the
// locks on the backing file that every node honours.
//
// # The per-file protocol
//
// Five mechanisms keep the users of a file, the DM application that
// recalls and migrates it, and the nodes of a cluster out of each
// other's way. From the narrowest to the widest:
//
//  1. The DM rights (dmapi.Rights; one process, by inode). A migration
//     holds a file's right exclusively, a recall (and making a
//     premigrated file resident) shared: no migration runs while this
//     process recalls the file, and back. Admin migrations wait for it;
//     the space monitor's try and skip (a recall may be waiting for the
//     space they free). A waiting exclusive taker keeps new shared ones
//     out.
//
//  2. The mount's gate (fusefs gate; one mount, by inode). Writers hold
//     its io lock shared and every record commit through this mount holds
//     it exclusively (migrate.Gate Commit and CommitCopy, the time
//     changes of setattr, unlink and rename-over). A release holds new
//     opens and waits up to release-wait for open handles to close.
//
//  3. The cluster's holds (cluster clusterGate; every node that mounts
//     the filesystem). Before a release, the owner asks each other node
//     over the node RPC to hold its gate the same way, for at most
//     hold-lease. A node that cannot be asked makes the release give up;
//     the release confirms the holds are still within their lease just
//     before its punch.
//
//  4. The storage right and the read shield (this package: OFD locks on
//     two bytes of the backing file far past its data, which every
//     process on every node of the shared filesystem sees, and which a
//     crash or kill -9 drops).
//     The storage right (UnderRight, LockCommit) is taken exclusively for
//     every change of the file's state: a record written for a new copy,
//     a release's record and punch, making a file resident, a stale
//     copy's record removed, setattr writing the record back. It is taken
//     shared for a recall's write of bytes and for the removal of a
//     stub's name (unlink, rename-over). The DESTROY queue tries it
//     shared and skips the entry while it is held (a commit may be about
//     to name the object); a recall's premigrated commit tries it
//     exclusively and leaves the file migrated while it is held. A writer
//     waiting for it ends a holder of this program on this host that
//     stays stopped past StoppedHolderPolicy.Grace.
//
//     The read shield (ShieldReads, ShieldReadsOn, TryExcludeReaders) is
//     held shared by every open of a regular file through a mount; a
//     kernel passthrough open holds it on the kernel's own backing
//     descriptor, so it lasts as long as the handle, whatever becomes of
//     the daemon. A release tries it exclusively just before its punch
//     and gives up while anyone holds it.
//
//     Whoever takes the storage right reads the record again under it: no
//     look taken before the right is trusted (an old owner paused past its
//     own look may have changed the file since).
//
//  5. The fence (dmapi.Fence; the owner's lease and epoch). Every commit
//     of the DM application (a record written or removed, a punch, an
//     object deleted) runs through it: the node's lease must be valid in
//     the lapse generation the session was claimed in, and the repository
//     must confirm the owner and epoch. A session that lapsed or was
//     replaced commits nothing. The fence takes no lock: a takeover waits
//     for the old owner's lease to lapse, and the storage right keeps the
//     other nodes off the file while the commit changes it.
//
// # Order
//
// Taken in this order, never the reverse, so no two takers deadlock:
// DM right, then the holds (cluster, then this mount's gate), then the
// storage right, then the read shield, then the fence around the commit.
// A release, for example (migrate.Migrator.release):
//
//	DM right (exclusive)
//	  holds on the other nodes, then this mount's gate (new opens held, open handles waited for)
//	    storage right (exclusive); record read again
//	      read shield (exclusive, tried: an open anywhere skips the file)
//	        fence: lease and epoch confirmed, holds still within their lease
//	          record "migrated" written and synced, then the punch
//
// UnderRight is that middle step for everyone (recall, migrate, the FUSE
// layer): the storage right, then the lease (Acting) if the caller has
// one, then the record read again. A recall's write of bytes: DM right
// (shared), UnderRight(ForRecallWrite), then the write. Making a premigrated or recalled file resident for a writer: DM
// right (shared), storage right (exclusive, UnderRight), record read again,
// the fence around the record's removal (through dmapi.DropReference, so
// that its object is destroyed, never leaked).
//
// The FUSE layer takes only the gate and the storage right (it commits no
// DM state: the owner does), and the read shield for its opens.
package stub
