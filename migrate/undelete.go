package migrate

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/namespace"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// UndeleteRequest names a kept version to bring back.
type UndeleteRequest struct {
	Path string    `json:"path"`         // backing-relative, where the file was
	At   time.Time `json:"at,omitzero"`  // the version current at this time (zero: the newest kept)
	To   string    `json:"to,omitempty"` // where to put it, backing-relative (default Path)
}

// ErrTargetExists: undelete never replaces a file; --to names another path.
var ErrTargetExists = errors.New("a file is there; give another path with --to")

// undeletePrefix names the file an undelete makes before it is in place.
const undeletePrefix = ".cascadefs-undelete-"

// Undelete brings a kept version back at req.To (or its own path) as a
// migrated stub with its owner, mode, times and extended attributes; its
// data comes back from the archive at the first read. It never replaces
// a file. Each step is safe across a crash:
//
//  1. the stub is made under a hidden name in the target directory, its
//     record naming the kept object and bound to the new inode, synced;
//  2. the queue entry is pointed at the new file (its handle): from then
//     on the DESTROY queue sees a file that uses the object and keeps it,
//     even past the retention;
//  3. the stub is renamed into place (RENAME_NOREPLACE);
//  4. the entry goes.
//
// A crash before 2 leaves the hidden file (removed by the next undelete
// of that version) and the entry as it was; after 2 the object is safe.
func (q *DestroyQueue) Undelete(root *beneath.Root, fence dmapi.Fence, req UndeleteRequest) (KeptVersion, error) {
	token, e, err := q.pick(req)
	if err != nil {
		return KeptVersion{}, err
	}
	if e.File == nil {
		return KeptVersion{}, fmt.Errorf("%s: its version was kept without its attributes; it cannot be brought back", req.Path)
	}
	rec, err := stub.Decode(e.File.Record)
	if err != nil {
		return KeptVersion{}, fmt.Errorf("%s: kept record: %w", req.Path, err)
	}
	to := req.To
	if to == "" {
		to = req.Path
	}
	to, err = beneath.Clean(to)
	if err != nil || to == "." {
		return KeptVersion{}, fmt.Errorf("undelete to %q: not a file's path", to)
	}
	// Opened for reading, not O_PATH: it is synced after the rename.
	d, err := root.OpenDir(filepath.Dir(to))
	if err != nil {
		return KeptVersion{}, fmt.Errorf("%s: its directory: %w", to, err)
	}
	defer d.Close()
	dir, base := int(d.Fd()), filepath.Base(to)
	if err := unix.Fstatat(dir, base, new(unix.Stat_t), unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return KeptVersion{}, fmt.Errorf("%s: %w", to, ErrTargetExists)
	}
	hidden := undeletePrefix + token
	unix.Unlinkat(dir, hidden, 0) // left by an undelete that crashed
	fd, err := unix.Openat(dir, hidden, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return KeptVersion{}, fmt.Errorf("%s: %w", to, err)
	}
	defer unix.Close(fd)
	placed := false
	defer func() {
		if !placed {
			unix.Unlinkat(dir, hidden, 0)
		}
	}()
	f := e.File
	if err := namespace.MakeStub(fd, rec, f.Attrs); err != nil {
		return KeptVersion{}, fmt.Errorf("%s: %w", to, err)
	}
	if err := failpoint.Hit(failpoint.UndeleteAfterStub); err != nil {
		return KeptVersion{}, err
	}
	// 2: the entry names the new file.
	handle, err := stub.HandleOf(fd)
	if err != nil {
		return KeptVersion{}, fmt.Errorf("%s: %w", to, err)
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	if !protect.Off(protect.UndeleteBinding) {
		e.Event.Handle, e.Event.Ino = handle, st.Ino
	}
	if err := q.write(e); err != nil {
		return KeptVersion{}, err
	}
	if err := failpoint.Hit(failpoint.UndeleteBeforeRename); err != nil {
		return KeptVersion{}, err
	}
	// 3 and 4, through the fence: a replaced owner brings nothing back.
	err = fence.Run(func() error {
		if err := unix.Renameat2(dir, hidden, dir, base, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%s: %w", to, ErrTargetExists)
			}
			return err
		}
		placed = true
		return unix.Fsync(dir)
	})
	if err != nil {
		return KeptVersion{}, err
	}
	if err := failpoint.Hit(failpoint.UndeleteBeforeForget); err != nil {
		return KeptVersion{}, err
	}
	if err := q.store.Delete(token); err != nil {
		// The file uses the object: the queue drops the entry by itself.
		q.log.Warn("undelete: entry left; the DESTROY queue drops it", "token", token, "reason", err)
	}
	q.journal.Load().Add(namespace.JournalEntry{Op: namespace.OpPlace, Key: e.Event.Key, To: filepath.Clean(to)})
	v := q.version(token, e)
	v.Path = filepath.Clean(to)
	q.log.Info("undeleted", "fs", q.fs, "file", to, "was", e.Event.Path, "key", e.Event.Key)
	return v, nil
}

// pick finds the kept version req names: the newest kept of its path,
// or, with req.At, the one that was current then (the first deleted or
// replaced after it).
func (q *DestroyQueue) pick(req UndeleteRequest) (string, destroyEntry, error) {
	all, err := q.store.List()
	if err != nil {
		return "", destroyEntry{}, err
	}
	var token string
	var best destroyEntry
	for t, raw := range all {
		var e destroyEntry
		if json.Unmarshal(raw, &e) != nil || !q.keeps(&e) || filepath.Clean(e.Event.Path) != filepath.Clean(req.Path) {
			continue
		}
		switch {
		case req.At.IsZero():
			if token == "" || e.Committed.After(best.Committed) {
				token, best = t, e
			}
		case !e.Committed.Before(req.At) && (e.File == nil || e.File.MtimeNs <= req.At.UnixNano()):
			if token == "" || e.Committed.Before(best.Committed) {
				token, best = t, e
			}
		}
	}
	if token == "" {
		if req.At.IsZero() {
			return "", destroyEntry{}, fmt.Errorf("%s: no deleted or replaced version of it is kept", req.Path)
		}
		return "", destroyEntry{}, fmt.Errorf("%s: no kept version of it was current at %s", req.Path, req.At.Format(time.RFC3339))
	}
	return token, best, nil
}
