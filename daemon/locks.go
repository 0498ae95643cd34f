package daemon

import (
	"context"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/scrub"
	"github.com/cascadefs/cascadefs/stub"
)

// keepLocks keeps the objects of every live file locked, where the
// archive locks objects: a pass at the session's start and then every
// half retention extends each lock to a retention from then, so a lock
// always has half a retention left, whoever holds the archive's keys.
func (d *DM) keepLocks(ctx context.Context) {
	for {
		wait := time.Minute // the retention is looked at again this often
		if l, ok := archive.LockerOf(d.arch); ok {
			if r := time.Duration(d.retention.Load()); r > 0 {
				// A call of the session: Close waits for it to end.
				cctx, done, err := d.enter(ctx)
				if err != nil {
					return
				}
				d.lockPass(cctx, l, r)
				done()
				wait = max(r/2, 30*time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// lockPass extends the locks of every live file's objects to a retention
// from now.
func (d *DM) lockPass(ctx context.Context, l archive.Locker, r time.Duration) {
	until := time.Now().Add(r)
	s := &scrub.Scrubber{Root: d.root, Arch: d.arch, Log: d.log}
	files, failed := 0, 0
	err := s.EachStub(ctx, func(rel string, rec *stub.Record) error {
		files++
		if err := lockAll(ctx, l, rec.Key, until); err != nil && ctx.Err() == nil {
			failed++
			d.log.Warn("archive lock not extended; the next pass tries again", "fs", d.cfg.Name, "file", rel, "key", rec.Key, "reason", err)
		}
		return ctx.Err()
	})
	if err == nil {
		d.log.Info("archive locks of live files extended", "fs", d.cfg.Name, "files", files, "failed", failed, "until", until.UTC().Format(time.RFC3339))
	}
}

// lockAll extends the locks of the data object key and its companions.
func lockAll(ctx context.Context, l archive.Locker, key string, until time.Time) error {
	for _, k := range append([]string{key}, archive.Companions(key)...) {
		if err := l.LockUntil(ctx, k, until); err != nil {
			return err
		}
	}
	return nil
}
