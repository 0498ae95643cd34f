package dmapi

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Garbage is the durable record of archive objects about to stop backing
// any file: the queue of asynchronous DESTROY events. An entry is prepared
// before the change that may orphan the object (an unlink, the removal of
// a stale record, an upload that may fail), committed once the object is
// garbage (it will be deleted) or aborted when a file still uses it. A
// prepared entry found after a crash is resolved by looking at the file,
// found by its handle (renames and links do not lose it), and no object is
// deleted while that file's record still names it.
type Garbage interface {
	// Prepare notes that key may stop backing the open file fd (at rel);
	// fate says what becomes of it once committed.
	Prepare(fd int, rel string, key string, fate Fate) (token string, err error)
	// Commit makes the entry ready; if that cannot be written, the entry
	// stays prepared and is resolved at the next start.
	Commit(token string)
	Abort(token string)
}

// Fate is what becomes of an object once its entry is committed.
type Fate int

const (
	// Discard: an upload that no file came to use; deleted at once.
	Discard Fate = iota
	// Deleted: the copy of a file whose last name went; kept for the
	// filesystem's retention, and undelete can bring the file back.
	Deleted
	// Replaced: the old copy of a file that was rewritten or copied
	// again; kept for the retention like a deleted one.
	Replaced
)

func (f Fate) String() string {
	switch f {
	case Deleted:
		return "deleted"
	case Replaced:
		return "replaced"
	}
	return "discarded"
}

// DropReference runs change, which stops the file fd (at rel) from using the
// object key (a record removal), between Prepare and Commit: a crash at
// any moment neither leaks the object nor deletes one that is still in
// use. The change is made durable (fsync) before the entry is committed:
// a record that came back after a crash would name a deleted object. If
// that sync fails, the entry stays prepared and is resolved by looking at
// the file at the next start.
func DropReference(g Garbage, fd int, rel string, key string, change func() error) error {
	token, err := g.Prepare(fd, rel, key, Replaced)
	if err != nil {
		return err
	}
	if err := change(); err != nil {
		g.Abort(token)
		return err
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("sync record removal: %w", err)
	}
	g.Commit(token)
	return nil
}
