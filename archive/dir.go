package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Dir is an archive in a plain directory: the embedded default for a
// machine without an object store.
type Dir struct{ root string }

// NewDir opens (creating if needed) a directory archive.
func NewDir(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("archive dir: %w", err)
	}
	return &Dir{root: filepath.Clean(root)}, nil
}

func (d *Dir) String() string { return "file://" + d.root }

func (d *Dir) path(key string) (string, error) {
	clean := filepath.Clean("/" + key)
	if clean == "/" || strings.Contains(key, "..") {
		return "", fmt.Errorf("archive: bad key %q", key)
	}
	return filepath.Join(d.root, clean), nil
}

func (d *Dir) Check(ctx context.Context) error {
	st, err := os.Stat(d.root)
	if err != nil {
		return fmt.Errorf("archive %s: %w", d, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("archive %s: not a directory", d)
	}
	return nil
}

// Put writes to a temporary file, fsyncs it and renames it into place, so
// a crash never leaves a partial object under key.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64) (ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if err := d.mkdirSynced(filepath.Dir(p)); err != nil {
		return ObjectInfo{}, fmt.Errorf("archive put %s: %w", key, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), tempPrefix(p)+"*")
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("archive put %s: %w", key, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	n, err := io.Copy(tmp, &ctxReader{ctx: ctx, r: r})
	if err == nil && n != size {
		err = fmt.Errorf("wrote %d of %d bytes", n, size)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		err = tmp.Close()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err == nil {
		err = syncDir(filepath.Dir(p))
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("archive put %s: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: n}, nil
}

func (d *Dir) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("archive get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("archive get %s: %w", key, err)
	}
	if length < 0 {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		length = st.Size() - off
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, off, length), f}, nil
}

func (d *Dir) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return ObjectInfo{}, fmt.Errorf("archive stat %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("archive stat %s: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: st.Size()}, nil
}

func (d *Dir) Delete(ctx context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("archive delete %s: %w", key, err)
	} else if err == nil {
		// The queue forgets the entry next: a delete lost in a crash
		// would leak the object.
		if err := syncDir(filepath.Dir(p)); err != nil {
			return fmt.Errorf("archive delete %s: %w", key, err)
		}
	}
	// A Put cut short by a crash leaves its temporary file: it goes too.
	temps, _ := filepath.Glob(filepath.Join(filepath.Dir(p), globEscape(tempPrefix(p))+"*"))
	for _, t := range temps {
		os.Remove(t)
	}
	return nil
}

func (d *Dir) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	top := d.root
	if prefix != "" {
		p, err := d.path(prefix)
		if err != nil {
			return err
		}
		top = p
		if !strings.HasSuffix(prefix, "/") {
			top = filepath.Dir(p) // a key prefix, not only a directory
		}
	}
	err := filepath.WalkDir(top, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if e.IsDir() || !e.Type().IsRegular() {
			return nil
		}
		key, _ := filepath.Rel(d.root, p)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return nil // gone meanwhile
		}
		return fn(ObjectInfo{Key: key, Size: info.Size(), Modified: info.ModTime(),
			Incomplete: strings.HasPrefix(e.Name(), ".put-")})
	})
	if err != nil {
		return fmt.Errorf("archive list %s: %w", prefix, err)
	}
	return nil
}

// tempPrefix names the temporary files of a Put of the object at p.
func tempPrefix(p string) string { return ".put-" + filepath.Base(p) + "-" }

func globEscape(s string) string {
	return strings.NewReplacer("*", "\\*", "?", "\\?", "[", "\\[", "\\", "\\\\").Replace(s)
}

// mkdirSynced makes dir and its missing parents inside the archive, each
// new entry synced in its parent, so an object renamed into dir survives
// a crash.
func (d *Dir) mkdirSynced(dir string) error {
	if dir == d.root {
		return nil
	}
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if err := d.mkdirSynced(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
