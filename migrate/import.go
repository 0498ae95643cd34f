package migrate

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/namespace"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// ImportRequest asks for a stub under Path for every object under the
// S3 prefix URL that cascadefs did not write.
type ImportRequest struct {
	URL    string `json:"url"`  // s3://BUCKET[/PREFIX], on the first copy's S3 service
	Path   string `json:"path"` // backing-relative directory the stubs go under
	DryRun bool   `json:"dry_run,omitempty"`
}

// ImportReport is what an import did (or, dry, would do).
type ImportReport struct {
	Objects  int           `json:"objects"`   // listed under the URL
	Made     int           `json:"made"`      // stubs made (dry run: to make)
	Bytes    int64         `json:"bytes"`     // their sizes
	Existing int           `json:"existing"`  // a file or directory was there: left as it is
	Ours     int           `json:"ours"`      // objects cascadefs wrote: not imported
	BadNames int           `json:"bad_names"` // keys that name no path inside the filesystem
	Failed   int           `json:"failed"`
	Problems []string      `json:"problems,omitempty"` // the first ReportLimit
	DryRun   bool          `json:"dry_run,omitempty"`
	Last     string        `json:"last,omitempty"` // the last key done
	Duration time.Duration `json:"duration_ns"`
}

// importLimit bounds the problems a report names.
const importLimit = 100

// importPrefix names the file an import makes before it is in place.
const importPrefix = ".cascadefs-import-"

func (r *ImportReport) problem(format string, args ...any) {
	if len(r.Problems) < importLimit {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Import makes, under the directory req.Path, a migrated stub for every
// object under req.URL that cascadefs did not write, at the object's key
// below the prefix: its size and mtime from the object, owned by the
// directory's owner, mode 0644. An existing file is never replaced. The
// stub reads the object (bound to its ETag) at the first read; its
// checksums are made at its first full recall. cascadefs never deletes
// an imported object, whatever happens to its stub.
func (m *Migrator) Import(ctx context.Context, req ImportRequest, progress func(ImportReport)) (*ImportReport, error) {
	started := time.Now()
	rep := &ImportReport{DryRun: req.DryRun}
	top, err := beneath.Clean(req.Path)
	if err != nil {
		return nil, fmt.Errorf("import into %q: %w", req.Path, err)
	}
	dir, err := m.root.OpenDir(top)
	if err != nil {
		return nil, fmt.Errorf("import into %s: %w", top, err)
	}
	var owner unix.Stat_t
	err = unix.Fstat(int(dir.Fd()), &owner)
	dir.Close()
	if err != nil {
		return nil, err
	}
	bucket, prefix, err := archive.ParseImportURL(m.arch, req.URL)
	if err != nil {
		return nil, err
	}
	origin, err := archive.Origin(m.arch, bucket)
	if err != nil {
		return nil, err
	}
	err = origin.List(ctx, prefix, func(o archive.ObjectInfo) error {
		if o.Incomplete {
			return nil
		}
		name := strings.TrimPrefix(o.Key, prefix)
		if strings.HasSuffix(name, "/") && o.Size == 0 {
			return nil // a "directory" marker
		}
		rep.Objects++
		defer func() {
			rep.Last = o.Key
			if progress != nil {
				progress(*rep)
			}
		}()
		if archive.Wrote(m.arch, bucket, o.Key) {
			rep.Ours++
			return nil
		}
		if !localName(name) {
			rep.BadNames++
			rep.problem("%s: not a path inside the filesystem", o.Key)
			return nil
		}
		rel := path.Join(top, name)
		if req.DryRun {
			if _, err := m.root.Lstat(rel); err == nil {
				rep.Existing++
			} else {
				rep.Made++
				rep.Bytes += o.Size
			}
			return nil
		}
		switch err := m.importOne(rel, top, bucket, o, &owner); {
		case errors.Is(err, ErrTargetExists):
			rep.Existing++
		case err != nil:
			rep.Failed++
			rep.problem("%s: %v", o.Key, err)
			m.log.Warn("import: no stub made", "fs", m.cfg.FS, "key", o.Key, "reason", err)
		default:
			rep.Made++
			rep.Bytes += o.Size
		}
		return ctx.Err()
	})
	rep.Duration = time.Since(started)
	if err != nil {
		return rep, fmt.Errorf("import %s: %w", req.URL, err)
	}
	m.log.Info("import done", "fs", m.cfg.FS, "url", req.URL, "path", top, "made", rep.Made, "bytes", rep.Bytes,
		"existing", rep.Existing, "ours", rep.Ours, "bad_names", rep.BadNames, "failed", rep.Failed, "dry_run", req.DryRun)
	return rep, nil
}

// localName: a key below the prefix that is a clean path of names a
// directory can hold.
func localName(name string) bool {
	if name == "" || path.Clean(name) != name || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
		return false
	}
	for _, c := range strings.Split(name, "/") {
		if c == "." || c == ".." || len(c) > 255 || strings.HasPrefix(c, importPrefix) || strings.HasPrefix(c, undeletePrefix) {
			return false
		}
	}
	return true
}

// importOne makes the stub of o at rel: under a hidden name, the record
// first, then renamed into place (never over a file), through the fence.
// Directories on the way are made with the owner of top.
func (m *Migrator) importOne(rel, top, bucket string, o archive.ObjectInfo, owner *unix.Stat_t) error {
	if err := m.mkdirs(path.Dir(rel), top, owner); err != nil {
		return err
	}
	d, err := m.root.OpenDir(path.Dir(rel))
	if err != nil {
		return err
	}
	defer d.Close()
	dir, base := int(d.Fd()), path.Base(rel)
	if err := unix.Fstatat(dir, base, new(unix.Stat_t), unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return fmt.Errorf("%s: %w", rel, ErrTargetExists)
	}
	hidden := importPrefix + dmapi.NewToken()
	fd, err := unix.Openat(dir, hidden, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	placed := false
	defer func() {
		if !placed {
			unix.Unlinkat(dir, hidden, 0)
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	mtime := o.Modified.UnixNano()
	attrs := namespace.Attrs{Size: o.Size, UID: owner.Uid, GID: owner.Gid, Mode: 0o644, AtimeNs: mtime, MtimeNs: mtime}
	if o.Size > 0 {
		rec := &stub.Record{Key: m.newKey(st.Ino), ETag: o.ETag, Size: o.Size, ChunkSize: m.cfg.ChunkSize,
			MigratedAt: time.Now().Unix(), SumsCount: stub.ChunkCount(o.Size, m.cfg.ChunkSize),
			Imported: true, Unverified: true, OriginBucket: bucket, OriginKey: o.Key}
		err = namespace.MakeStub(fd, rec, attrs)
	} else {
		err = namespace.MakeEmpty(fd, attrs) // nothing to recall: no record
	}
	if err != nil {
		return err
	}
	return m.Fence.Run(func() error {
		if err := unix.Renameat2(dir, hidden, dir, base, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%s: %w", rel, ErrTargetExists)
			}
			return err
		}
		placed = true
		return unix.Fsync(dir)
	})
}

// mkdirs makes the directories of rel below top that are missing, owned
// by owner, mode 0755.
func (m *Migrator) mkdirs(rel, top string, owner *unix.Stat_t) error {
	if rel == top || rel == "." {
		return nil
	}
	if st, err := m.root.Lstat(rel); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s: not a directory: %w", rel, ErrTargetExists)
		}
		return nil
	}
	if err := m.mkdirs(path.Dir(rel), top, owner); err != nil {
		return err
	}
	parent, base, err := m.root.OpenParent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if err := unix.Mkdirat(parent, base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return unix.Fchownat(parent, base, int(owner.Uid), int(owner.Gid), unix.AT_SYMLINK_NOFOLLOW)
}
