// Package namespace keeps, in the archive, what recreating a filesystem's
// stubs needs when its disk is lost: beside each data object a
// description of the file as it was at upload (Meta, FS/INO/GEN.meta),
// and a journal of the namespace changes that came after (renames,
// deletions, undeletes). Rebuild replays both into an empty directory.
//
// What it does not keep: files never migrated, hard links beyond one
// name, directories with no migrated file under them, and changes of
// owner, mode or times after the upload.
package namespace

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Attrs are a file's attributes that a stub made again must carry.
type Attrs struct {
	Size    int64             `json:"size"`
	UID     uint32            `json:"uid"`
	GID     uint32            `json:"gid"`
	Mode    uint32            `json:"mode"`
	AtimeNs int64             `json:"atime_ns"`
	MtimeNs int64             `json:"mtime_ns"`
	Xattrs  map[string][]byte `json:"xattrs,omitempty"` // the user's own
}

// DirAttrs are a directory's owner, mode and modification time.
type DirAttrs struct {
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
	Mode    uint32 `json:"mode"`
	MtimeNs int64  `json:"mtime_ns"`
}

// MaxXattrs bounds the extended attributes kept with a file; a file with
// more keeps none.
const MaxXattrs = 64 << 10

// ReadAttrs reads the attributes of the open file fd.
func ReadAttrs(fd int) (Attrs, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Attrs{}, err
	}
	return Attrs{Size: st.Size, UID: st.Uid, GID: st.Gid, Mode: st.Mode, AtimeNs: st.Atim.Nano(), MtimeNs: st.Mtim.Nano(),
		Xattrs: userXattrs(fd)}, nil
}

// ReadDirAttrs reads the attributes of the open directory fd.
func ReadDirAttrs(fd int) (DirAttrs, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return DirAttrs{}, err
	}
	return DirAttrs{UID: st.Uid, GID: st.Gid, Mode: st.Mode & 0o7777, MtimeNs: st.Mtim.Nano()}, nil
}

// userXattrs are the file's extended attributes but cascadefs's own (none
// past MaxXattrs in all).
func userXattrs(fd int) map[string][]byte {
	n, err := unix.Flistxattr(fd, nil) // the list's size first: most files have few or none
	if err != nil || n == 0 || n > MaxXattrs {
		return nil
	}
	buf := make([]byte, n)
	if n, err = unix.Flistxattr(fd, buf); err != nil {
		return nil
	}
	out := map[string][]byte{}
	total := 0
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !keptXattr(name) {
			continue
		}
		size, err := unix.Fgetxattr(fd, name, nil)
		if err != nil || size > MaxXattrs {
			continue
		}
		val := make([]byte, size)
		m, err := unix.Fgetxattr(fd, name, val)
		if err != nil {
			continue
		}
		if total += len(name) + m; total > MaxXattrs {
			return nil
		}
		out[name] = val[:m]
	}
	return out
}

// keptXattr says whether the extended attribute name is kept with a
// version and made again: the user's own (user.*, but cascadefs's) and
// POSIX ACLs. Never security.* or trusted.*: a file capability or a label
// read back from an archive that someone else could write would be a
// privilege handed out.
func keptXattr(name string) bool {
	switch {
	case strings.HasPrefix(name, stub.XattrPrefix):
		return false
	case strings.HasPrefix(name, "user."), name == "system.posix_acl_access", name == "system.posix_acl_default":
		return true
	}
	return false
}

// MakeStub makes the empty file fd the migrated stub of rec with the
// attributes a: size, record (bound to fd's inode), extended attributes,
// owner, mode and times, synced.
func MakeStub(fd int, rec *stub.Record, a Attrs) error {
	// The record first: a reader who finds the file meanwhile gets a
	// recall, never the zeros of a sparse file.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	rec.State, rec.Ino = stub.Migrated, st.Ino
	if err := stub.WriteRecord(fd, rec); err != nil {
		return err
	}
	if err := unix.Ftruncate(fd, a.Size); err != nil {
		return err
	}
	for name, val := range a.Xattrs {
		if !keptXattr(name) {
			continue
		}
		if err := unix.Fsetxattr(fd, name, val, 0); err != nil {
			return fmt.Errorf("extended attribute %s: %w", name, err)
		}
	}
	if err := unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, a.Mode&0o7777); err != nil { // after chown, which drops set-id bits
		return err
	}
	st.Atim, st.Mtim = unix.NsecToTimespec(a.AtimeNs), unix.NsecToTimespec(a.MtimeNs)
	if err := stub.RestoreTimes(fd, &st); err != nil {
		return err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	rec.State, rec.Ino, rec.Size, rec.MtimeNs = stub.Migrated, st.Ino, st.Size, stub.MtimeNs(&st)
	return stub.WriteRecordSync(fd, rec)
}

// MakeEmpty gives the empty file fd (that needs no record) the owner,
// mode and times of a, synced.
func MakeEmpty(fd int, a Attrs) error {
	if err := unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, a.Mode&0o7777); err != nil {
		return err
	}
	var st unix.Stat_t
	st.Atim, st.Mtim = unix.NsecToTimespec(a.AtimeNs), unix.NsecToTimespec(a.MtimeNs)
	if err := stub.RestoreTimes(fd, &st); err != nil {
		return err
	}
	return unix.Fsync(fd)
}

// metaFormat is the version of Meta's encoding.
const metaFormat = 1

// Meta describes a file as it was when it was uploaded: what a rebuild
// needs to make its stub again.
type Meta struct {
	Format int    `json:"format"`
	FS     string `json:"fs"`
	Path   string `json:"path"` // relative to the filesystem's root
	// Seen: when the file was found at Path (before it was opened):
	// journal entries after it apply.
	Seen time.Time `json:"seen"`
	Attrs
	Record []byte     `json:"record"`         // the record the upload committed
	Dirs   []DirAttrs `json:"dirs,omitempty"` // Path's directories, outermost first
}

// maxMetaSize bounds what a read of a description accepts.
const maxMetaSize = 1 << 20

// Put stores m beside the data object its record names, sealed with
// keys if set (it names the file and holds its attributes).
func (m *Meta) Put(ctx context.Context, a archive.Archive, keys *seal.Keyring) error {
	rec, err := stub.Decode(m.Record)
	if err != nil {
		return fmt.Errorf("description of %s: %w", m.Path, err)
	}
	m.Format = metaFormat
	blob, err := json.Marshal(m)
	if err != nil {
		return err
	}
	name := archive.MetaKey(rec.Key)
	if protect.Off(protect.SealNames) {
		keys = nil
	}
	if blob, err = keys.SealBlob(name, blob); err != nil {
		return err
	}
	if _, err := a.Put(ctx, name, bytes.NewReader(blob), int64(len(blob))); err != nil {
		return fmt.Errorf("description of %s: %w", m.Path, err)
	}
	return nil
}

// GetMeta reads the description of the data object key, checked: its
// record names key, its path is local. A sealed one is opened with keys
// (seal.ErrNoKey if it cannot be).
func GetMeta(ctx context.Context, a archive.Archive, key string, keys *seal.Keyring) (*Meta, error) {
	blob, err := readBlob(ctx, a, archive.MetaKey(key), maxMetaSize, keys)
	if err != nil {
		return nil, fmt.Errorf("description of %s: %w", key, err)
	}
	var m Meta
	if err := json.Unmarshal(blob, &m); err != nil {
		return nil, fmt.Errorf("description of %s: %w", key, err)
	}
	if m.Format != metaFormat {
		return nil, fmt.Errorf("description of %s: format %d, this version reads %d", key, m.Format, metaFormat)
	}
	rec, err := stub.Decode(m.Record)
	if err != nil {
		return nil, fmt.Errorf("description of %s: %w", key, err)
	}
	if rec.Key != key {
		return nil, fmt.Errorf("description of %s names another object (%s)", key, rec.Key)
	}
	if m.Path = filepath.Clean(m.Path); !filepath.IsLocal(m.Path) {
		return nil, fmt.Errorf("description of %s: path %q is not inside the filesystem", key, m.Path)
	}
	return &m, nil
}
