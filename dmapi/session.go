package dmapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Handler does the work an event asks for (recall, ...). It runs with the
// session's context, not the reader's: an interrupted reader does not cancel
// the work other readers share.
type Handler func(ctx context.Context, ev *Event) error

// Config sets a session's limits: the settings workers and event-timeout
// (their defaults are in package settings; both must be set).
type Config struct {
	// Workers bounds the events handled at once (admission control).
	Workers int
	// Timeout bounds how long a synchronous event waits for its answer
	// before the waiter gets ErrTimeout.
	Timeout time.Duration
}

// ErrTimeout is returned to a waiter whose event was not answered in time.
var ErrTimeout = errors.New("DM event timed out")

// ErrClosed is returned when the session stops before answering.
var ErrClosed = errors.New("DM session closed")

// ErrCanceled answers the waiters of an event an admin cancelled.
var ErrCanceled = errors.New("cancelled by an admin")

// Session is the DM session of one managed filesystem: a queue of pending
// events, deduplicated, handled by a bounded pool of workers. Readers'
// events go first, and some workers are kept for them: a bulk recall
// never takes them all.
type Session struct {
	FS      string
	cfg     Config
	handler Handler
	log     *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	cond     *sync.Cond
	queue    []*call
	inflight map[dedupeKey]*call
	running  int
	bulk     int            // running calls that are not readers'
	reserved int            // workers only readers' events may take
	byUser   map[uint32]int // running readers' calls per user (Event.UID)
	closed   bool
	progress time.Time // last completion, or when the session last became busy
}

type call struct {
	ev       *Event
	prio     Priority // the most urgent of its waiters'
	done     chan struct{}
	err      error
	answered bool // done is closed (a cancel answers before the handler ends)
	waiters  int
	queued   time.Time
	started  time.Time
	cancel   context.CancelFunc // of the running handler
}

// answer gives the call's waiters err; s.mu is held.
func (c *call) answer(err error) {
	if !c.answered {
		c.err, c.answered = err, true
		close(c.done)
	}
}

// NewSession starts a session with its workers.
func NewSession(fs string, cfg Config, h Handler, log *slog.Logger) *Session {
	if cfg.Workers <= 0 || cfg.Timeout <= 0 {
		panic("dmapi: a session Config without Workers and Timeout (settings.Defaults has them)")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler) // none given: none
	}
	s := &Session{FS: fs, cfg: cfg, handler: h, log: log, inflight: map[dedupeKey]*call{}, byUser: map[uint32]int{}}
	if cfg.Workers >= 2 {
		s.reserved = max(1, cfg.Workers/4)
	}
	s.cond = sync.NewCond(&s.mu)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// One worker more than cfg.Workers: it only takes a reader's event of
	// a user who has none running (see next).
	for range cfg.Workers + 1 {
		s.wg.Add(1)
		go s.worker()
	}
	return s
}

// Raise queues a synchronous event (or joins an identical one in flight)
// and waits for its answer. ctx is the waiter's: when it ends the waiter
// returns its error (EINTR at the FUSE boundary) and the work goes on.
func (s *Session) Raise(ctx context.Context, ev *Event) error {
	c, err := s.enqueue(ev)
	if err != nil {
		return err
	}
	timer := time.NewTimer(s.cfg.Timeout)
	defer timer.Stop()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		s.log.Warn("DM event timed out", "event", ev.String(), "after", s.cfg.Timeout)
		return fmt.Errorf("%s: %w", ev, ErrTimeout)
	}
}

// Post queues an event without waiting for it.
func (s *Session) Post(ev *Event) error {
	_, err := s.enqueue(ev)
	return err
}

func (s *Session) enqueue(ev *Event) (*call, error) {
	if ev.Token == "" {
		ev.Token = NewToken()
	}
	k := ev.dedupeKey()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if c := s.inflight[k]; c != nil {
		c.waiters++
		c.prio = min(c.prio, ev.Priority) // a reader joining bulk work hurries it
		return c, nil
	}
	c := &call{ev: ev, prio: ev.Priority, done: make(chan struct{}), waiters: 1, queued: time.Now()}
	if len(s.inflight) == 0 {
		s.progress = time.Now() // idle until now: nothing was late
	}
	s.inflight[k] = c
	s.queue = append(s.queue, c)
	s.cond.Signal()
	return c, nil
}

func (s *Session) worker() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		i := -1
		for !s.closed {
			if i = s.next(); i >= 0 {
				break
			}
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		c := s.queue[i]
		s.queue = slices.Delete(s.queue, i, i+1)
		s.running++
		bulk := c.prio > PriorityReader
		if bulk {
			s.bulk++
		} else {
			s.byUser[c.ev.UID]++
		}
		c.started = time.Now()
		ctx, cancel := context.WithCancel(s.ctx)
		c.cancel = cancel
		s.mu.Unlock()

		err := s.handle(ctx, c.ev)
		cancel()
		if err != nil && s.ctx.Err() != nil {
			err = ErrClosed // stopped, not failed: the originator may send it again elsewhere
		}

		s.mu.Lock()
		s.running--
		if bulk {
			s.bulk--
		} else if s.byUser[c.ev.UID]--; s.byUser[c.ev.UID] <= 0 {
			delete(s.byUser, c.ev.UID)
		}
		s.cond.Broadcast() // a worker may now take bulk work, or another user's reader
		s.progress = time.Now()
		if k := c.ev.dedupeKey(); s.inflight[k] == c {
			delete(s.inflight, k)
		}
		c.answer(err)
		s.mu.Unlock()
	}
}

// next is the index of the queued call a free worker takes: the first of
// the most urgent priority, with readers' calls shared fairly between
// users (the reader whose user has the fewest running goes first); bulk
// work only while the reserved workers stay free for readers; at most
// cfg.Workers calls at once, but for one more worker kept for a reader of
// a user who has none running, so that one user's many reads never make
// another user's first read wait for them. -1 for none. s.mu is held.
func (s *Session) next() int {
	best := -1
	for i, c := range s.queue {
		reader := c.prio == PriorityReader
		if !reader && s.bulk >= s.cfg.Workers-s.reserved {
			continue
		}
		if s.running >= s.cfg.Workers && (!reader || s.byUser[c.ev.UID] > 0) {
			continue // the spare worker is for another user's reader
		}
		if best < 0 {
			best = i
			continue
		}
		b := s.queue[best]
		if c.prio < b.prio || (reader && b.prio == PriorityReader && s.byUser[c.ev.UID] < s.byUser[b.ev.UID]) {
			best = i
		}
	}
	return best
}

// Cancel ends the pending events that match: queued ones are dropped,
// running ones see their context cancelled, and the waiters of both get
// ErrCanceled at once. What their work already did stays. It returns the
// events cancelled.
func (s *Session) Cancel(match func(*Event) bool) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Event
	for k, c := range s.inflight {
		if !match(c.ev) {
			continue
		}
		out = append(out, *c.ev)
		delete(s.inflight, k)
		if i := slices.Index(s.queue, c); i >= 0 {
			s.queue = slices.Delete(s.queue, i, i+1)
		} else if c.cancel != nil {
			c.cancel()
		}
		c.answer(fmt.Errorf("%s: %w", c.ev, ErrCanceled))
	}
	return out
}

func (s *Session) handle(ctx context.Context, ev *Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("DM handler panicked", "event", ev.String(), "panic", r)
			err = fmt.Errorf("%s: handler panic: %v", ev, r)
		}
	}()
	return s.handler(ctx, ev)
}

// Stuck reports a session that has events to handle but finished none
// for longer than after: its workers hang (the watchdog restarts it).
func (s *Session) Stuck(after time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.inflight) > 0 && time.Since(s.progress) > after
}

// PendingEvent is a snapshot of one event for status.
type PendingEvent struct {
	Event    Event         `json:"event"`
	Priority Priority      `json:"priority"` // the most urgent of its waiters'
	Running  bool          `json:"running"`
	Waiters  int           `json:"waiters"`
	Age      time.Duration `json:"age_ns"` // since it was raised
}

// Pending lists queued and running events.
func (s *Session) Pending() []PendingEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PendingEvent, 0, len(s.inflight))
	queued := map[*call]bool{}
	for _, c := range s.queue {
		queued[c] = true
	}
	for _, c := range s.inflight {
		pe := PendingEvent{Event: *c.ev, Priority: c.prio, Running: !queued[c], Waiters: c.waiters, Age: time.Since(c.queued)}
		out = append(out, pe)
	}
	return out
}

// Close stops the session: queued events are answered with ErrClosed,
// running handlers see their context cancelled and are waited for.
func (s *Session) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for _, c := range s.queue {
		delete(s.inflight, c.ev.dedupeKey())
		c.answer(ErrClosed)
	}
	s.queue = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}
