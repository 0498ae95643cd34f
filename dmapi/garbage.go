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
	// Prepare notes that key may stop backing the open file fd (at rel).
	Prepare(fd int, rel string, key string) (token string, err error)
	// Commit makes the entry ready; if that cannot be written, the entry
	// stays prepared and is resolved at the next start.
	Commit(token string)
	Abort(token string)
}

// DropReference runs change, which stops the file fd (at rel) from using the
// object key (a record removal), between Prepare and Commit: a crash at
// any moment neither leaks the object nor deletes one that is still in
// use. The change is made durable (fsync) before the entry is committed:
// a record that came back after a crash would name a deleted object. If
// that sync fails, the entry stays prepared and is resolved by looking at
// the file at the next start.
func DropReference(g Garbage, fd int, rel string, key string, change func() error) error {
	token, err := g.Prepare(fd, rel, key)
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
