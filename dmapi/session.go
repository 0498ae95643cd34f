package dmapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Handler does the work an event asks for (recall, ...). It runs with the
// session's context, not the reader's: an interrupted reader does not cancel
// the work other readers share.
type Handler func(ctx context.Context, ev *Event) error

// Config sets a session's limits.
type Config struct {
	// Workers bounds the events handled at once (admission control). Default 8.
	Workers int
	// Timeout bounds how long a synchronous event waits for its answer
	// before the waiter gets ErrTimeout. Default 10 minutes.
	Timeout time.Duration
}

// ErrTimeout is returned to a waiter whose event was not answered in time.
var ErrTimeout = errors.New("DM event timed out")

// ErrClosed is returned when the session stops before answering.
var ErrClosed = errors.New("DM session closed")

// Session is the DM session of one managed filesystem: a FIFO of pending
// events, deduplicated, handled by a bounded pool of workers.
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
	closed   bool
	progress time.Time // last completion, or when the session last became busy
}

type call struct {
	ev      *Event
	done    chan struct{}
	err     error
	waiters int
	started time.Time
}

// NewSession starts a session with its workers.
func NewSession(fs string, cfg Config, h Handler, log *slog.Logger) *Session {
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Session{FS: fs, cfg: cfg, handler: h, log: log, inflight: map[dedupeKey]*call{}}
	s.cond = sync.NewCond(&s.mu)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for range cfg.Workers {
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
		return c, nil
	}
	c := &call{ev: ev, done: make(chan struct{}), waiters: 1}
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
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		c := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.running++
		c.started = time.Now()
		s.mu.Unlock()

		err := s.handle(c.ev)
		if err != nil && s.ctx.Err() != nil {
			err = ErrClosed // stopped, not failed: the originator may send it again elsewhere
		}

		s.mu.Lock()
		s.running--
		s.progress = time.Now()
		delete(s.inflight, c.ev.dedupeKey())
		c.err = err
		close(c.done)
		s.mu.Unlock()
	}
}

func (s *Session) handle(ev *Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("DM handler panicked", "event", ev.String(), "panic", r)
			err = fmt.Errorf("%s: handler panic: %v", ev, r)
		}
	}()
	return s.handler(s.ctx, ev)
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
	Event   Event         `json:"event"`
	Running bool          `json:"running"`
	Waiters int           `json:"waiters"`
	Age     time.Duration `json:"age_ns"`
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
		pe := PendingEvent{Event: *c.ev, Running: !queued[c], Waiters: c.waiters}
		if !c.started.IsZero() {
			pe.Age = time.Since(c.started)
		}
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
		c.err = ErrClosed
		close(c.done)
	}
	s.queue = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}
