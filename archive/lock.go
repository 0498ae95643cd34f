package archive

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Object lock: a store (an S3 bucket with object lock enabled) that keeps
// an object's versions from deletion until a date, whoever asks, so that
// a stolen key cannot delete archived data before the retention ends.

// ErrLocked: the store keeps the object locked for a while yet.
var ErrLocked = errors.New("archive object locked")

// LockedError says which object is locked, and until when (zero: the
// store did not say).
type LockedError struct {
	Key   string
	Until time.Time
}

func (e *LockedError) Error() string {
	if e.Until.IsZero() {
		return fmt.Sprintf("archive object %s is locked (the store does not say until when)", e.Key)
	}
	return fmt.Sprintf("archive object %s is locked until %s", e.Key, e.Until.UTC().Format(time.RFC3339))
}

func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// Locker is an archive whose store can lock objects.
type Locker interface {
	// Locks reports whether the store locks objects (known after Check).
	Locks() bool
	// SetRetention locks what uploads of files store (objects, checksum
	// objects, descriptions) for d from their upload (0: not at all).
	SetRetention(d time.Duration)
	// LockUntil extends the lock of every version of key to until; a
	// lock that ends later stays as it is (none can be shortened).
	LockUntil(ctx context.Context, key string, until time.Time) error
}

// LockerOf is a's Locker, if its store locks objects.
func LockerOf(a Archive) (Locker, bool) {
	l, ok := a.(Locker)
	if !ok || !l.Locks() {
		return nil, false
	}
	return l, true
}

// lockable: the objects of a file's upload are locked; the journal and
// the scrub state (rewritten every few seconds) are not.
func lockable(key string) bool {
	return !strings.HasPrefix(key, JournalPrefix) && !strings.HasPrefix(key, ScrubPrefix)
}

// Copies lock in every copy whose store locks.

func (c *Copies) Locks() bool {
	for _, a := range c.all {
		if _, ok := LockerOf(a); ok {
			return true
		}
	}
	return false
}

func (c *Copies) SetRetention(d time.Duration) {
	for _, a := range c.all {
		if l, ok := LockerOf(a); ok {
			l.SetRetention(d)
		}
	}
}

func (c *Copies) LockUntil(ctx context.Context, key string, until time.Time) error {
	for i, a := range c.all {
		if l, ok := LockerOf(a); ok {
			if err := l.LockUntil(ctx, key, until); err != nil {
				return c.fail(i, err)
			}
		}
	}
	return nil
}
