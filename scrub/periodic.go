package scrub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/cascadefs/cascadefs/archive"
)

// State is how far the periodic scrub of a filesystem got, kept in the
// archive (archive.ScrubStateKey) so that a restarted or new owner goes on
// where the last one stopped.
type State struct {
	Started  time.Time `json:"started"`           // the run in progress, or the last one
	After    string    `json:"after,omitempty"`   // the run in progress finished every file up to this one
	Finished time.Time `json:"finished,omitzero"` // the last complete run ended (zero: one is in progress)
}

// Periodic runs a scrub of the whole filesystem every interval, with
// repair, resuming a run that a stop or a failover cut short.
type Periodic struct {
	Arch archive.Archive
	FS   string
	Log  *slog.Logger
	// Run runs one scrub (the DM's, one at a time with admins' runs).
	Run func(ctx context.Context, opt Options, progress func(Report)) (*Report, error)
	// Settings returns the interval (0: off) and the rate, as now set.
	Settings func() (every time.Duration, rate int64)
}

// saveEvery bounds how often a run's progress is written to the archive.
const saveEvery = 5 * time.Second

// Loop runs until ctx ends.
func (p *Periodic) Loop(ctx context.Context) {
	for {
		wait := time.Minute // settings are looked at again this often
		if every, rate := p.Settings(); every > 0 {
			st, err := p.load(ctx)
			switch {
			case err != nil:
				p.Log.Warn("periodic scrub: its state in the archive cannot be read; tried again", "fs", p.FS, "reason", err)
			case st.Finished.IsZero() && !st.Started.IsZero(), time.Since(st.Finished) >= every:
				p.runOnce(ctx, st, rate)
				continue
			default:
				wait = min(wait, time.Until(st.Finished.Add(every)))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (p *Periodic) runOnce(ctx context.Context, st State, rate int64) {
	if !st.Finished.IsZero() || st.Started.IsZero() {
		st = State{Started: time.Now()} // a new run
	}
	if err := p.save(ctx, st); err != nil {
		p.Log.Warn("periodic scrub: its state cannot be written; not started", "fs", p.FS, "reason", err)
		sleep(ctx, time.Minute)
		return
	}
	saved := time.Now()
	rep, err := p.Run(ctx, Options{Paths: []string{"."}, Repair: true, Rate: rate, After: st.After}, func(r Report) {
		if time.Since(saved) >= saveEvery {
			st.After, saved = r.Last, time.Now()
			p.save(ctx, st)
		}
	})
	if rep != nil && rep.Last != "" {
		st.After = rep.Last
	}
	if err == nil && rep != nil && rep.Complete {
		st.After, st.Finished = "", time.Now()
	} else if ctx.Err() == nil {
		p.Log.Warn("periodic scrub stopped; it resumes", "fs", p.FS, "after", st.After, "reason", err)
		defer sleep(ctx, time.Minute) // an admin's run, or the archive down: not at once
	}
	if err := p.save(context.WithoutCancel(ctx), st); err != nil {
		p.Log.Warn("periodic scrub: its state cannot be written", "fs", p.FS, "reason", err)
	}
}

func (p *Periodic) load(ctx context.Context) (State, error) {
	var st State
	body, err := p.Arch.Get(ctx, archive.ScrubStateKey(p.FS), 0, -1)
	if errors.Is(err, archive.ErrNotFound) {
		return st, nil // never run
	}
	if err != nil {
		return st, err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 1<<20))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

func (p *Periodic) save(ctx context.Context, st State) error {
	b, _ := json.Marshal(st)
	_, err := p.Arch.Put(ctx, archive.ScrubStateKey(p.FS), bytes.NewReader(b), int64(len(b)))
	return err
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
