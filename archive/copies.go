package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/cascadefs/cascadefs/internal/failpoint"
)

// Copies keeps every object in several archives at once (--archive given
// more than once). A write succeeds only when every copy took it, so a
// file is released only once every copy holds it; Stat answers only when
// every copy holds the object at the same size. A read is served by the
// first copy that answers; recall, which checks the bytes, moves to the
// next copy itself when a copy's bytes are wrong (Copy). List lists the
// first copy only.
type Copies struct {
	all []Archive
}

// Copier is an archive made of copies.
type Copier interface {
	Count() int
	Copy(i int) Archive
}

// NewCopies keeps objects in every archive of all (one: that archive).
func NewCopies(all ...Archive) Archive {
	if len(all) == 1 {
		return all[0]
	}
	return &Copies{all: all}
}

// CopyOf is copy i of a (a itself when it has no copies), and how many
// copies a has.
func CopyOf(a Archive, i int) (Archive, int) {
	if c, ok := a.(Copier); ok {
		return c.Copy(i), c.Count()
	}
	return a, 1
}

func (c *Copies) Count() int         { return len(c.all) }
func (c *Copies) Copy(i int) Archive { return c.all[i] }

func (c *Copies) String() string {
	names := make([]string, len(c.all))
	for i, a := range c.all {
		names[i] = a.String()
	}
	return strings.Join(names, " + ")
}

// fail names the copy an error came from.
func (c *Copies) fail(i int, err error) error {
	return fmt.Errorf("copy %d (%s): %w", i+1, c.all[i], err)
}

// Put streams r to every copy at once, at the pace of the slowest; if one
// fails, all do (the caller deletes what the others stored).
func (c *Copies) Put(ctx context.Context, key string, r io.Reader, size int64) (ObjectInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	infos := make([]ObjectInfo, len(c.all))
	errs := make([]error, len(c.all))
	writers := make([]io.Writer, len(c.all))
	pipes := make([]*io.PipeWriter, len(c.all))
	var wg sync.WaitGroup
	for i, a := range c.all {
		pr, pw := io.Pipe()
		writers[i], pipes[i] = pw, pw
		wg.Add(1)
		go func() {
			defer wg.Done()
			infos[i], errs[i] = a.Put(ctx, key, pr, size)
			if i == 0 && errs[i] == nil {
				errs[i] = failpoint.Hit(failpoint.CopyPutDone)
			}
			if errs[i] != nil {
				cancel() // the others stop too
				pr.CloseWithError(errs[i])
			} else {
				pr.CloseWithError(io.ErrShortWrite) // took all it wanted: more is an error
			}
		}()
	}
	_, err := io.Copy(io.MultiWriter(writers...), r)
	for _, pw := range pipes {
		pw.CloseWithError(err) // nil: EOF
	}
	wg.Wait()
	// The cause, not the copies stopped because of it.
	for _, cancelled := range []bool{false, true} {
		for i, e := range errs {
			if e != nil && errors.Is(e, context.Canceled) == cancelled {
				return ObjectInfo{}, c.fail(i, e)
			}
		}
	}
	if err != nil {
		return ObjectInfo{}, err
	}
	return infos[0], nil
}

// Get reads from the first copy that opens the object.
func (c *Copies) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	var errs []error
	for i, a := range c.all {
		body, err := a.Get(ctx, key, off, length)
		if err == nil {
			return body, nil
		}
		errs = append(errs, c.fail(i, err))
	}
	return nil, errors.Join(errs...)
}

// Stat describes the first copy's object once every copy holds it at the
// same size.
func (c *Copies) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	var first ObjectInfo
	for i, a := range c.all {
		info, err := a.Stat(ctx, key)
		if err != nil {
			return ObjectInfo{}, c.fail(i, err)
		}
		if i == 0 {
			first = info
		} else if info.Size != first.Size {
			return ObjectInfo{}, c.fail(i, fmt.Errorf("%s has %d bytes, the first copy %d", key, info.Size, first.Size))
		}
	}
	return first, nil
}

// Delete deletes the object from every copy.
func (c *Copies) Delete(ctx context.Context, key string) error {
	var errs []error
	for i, a := range c.all {
		if err := a.Delete(ctx, key); err != nil {
			errs = append(errs, c.fail(i, err))
		}
	}
	return errors.Join(errs...)
}

// List lists the first copy.
func (c *Copies) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return c.all[0].List(ctx, prefix, fn)
}

// Check checks every copy.
func (c *Copies) Check(ctx context.Context) error {
	for i, a := range c.all {
		if err := a.Check(ctx); err != nil {
			return c.fail(i, err)
		}
	}
	return nil
}
