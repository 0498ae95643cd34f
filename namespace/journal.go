package namespace

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/seal"
)

// The operations a journal entry records.
const (
	OpRename   = "rename"   // From was renamed To (a file or a directory)
	OpExchange = "exchange" // From and To swapped places
	OpDelete   = "delete"   // the file whose object is Key lost its last name (at Path)
	OpReplace  = "replace"  // the file whose object is Key was rewritten: Key is an old version
	OpPlace    = "place"    // the version Key was brought back at To (undelete)
)

// JournalEntry is one change of the namespace after an upload.
type JournalEntry struct {
	T    time.Time `json:"t"`
	Op   string    `json:"op"`
	From string    `json:"from,omitempty"`
	To   string    `json:"to,omitempty"`
	Key  string    `json:"key,omitempty"`
	Path string    `json:"path,omitempty"`
}

// Journal writes one node's namespace changes of one filesystem to the
// archive, in batches: an object every flushEvery while changes come, so
// a rename costs no round trip. A crash loses at most the last batch: a
// rebuild then puts the renamed files under their older names (never
// twice), or brings a file deleted in that second back.
type Journal struct {
	arch   archive.Archive
	fs     string
	source string
	keys   *seal.Keyring // seal each batch (nil: in the clear)
	log    *slog.Logger

	mu      sync.Mutex
	pending []JournalEntry
	dropped int
	stop    chan struct{}
	done    chan struct{}
}

const (
	flushEvery  = time.Second
	maxPending  = 100_000 // past it, the oldest changes are dropped (the archive has been down long)
	flushBudget = 10 * time.Second
)

// NewJournal starts the journal of filesystem fs written by source (a
// name unique among the writers: the mount's source); keys, if set,
// seal its batches (they name the files).
func NewJournal(arch archive.Archive, fs, source string, keys *seal.Keyring, log *slog.Logger) *Journal {
	j := &Journal{arch: arch, fs: fs, source: strings.ReplaceAll(source, "/", "_"), keys: keys, log: log,
		stop: make(chan struct{}), done: make(chan struct{})}
	go j.run()
	return j
}

// Add notes a change (now, unless e.T is set). A nil journal notes nothing.
func (j *Journal) Add(e JournalEntry) {
	if j == nil {
		return
	}
	if e.T.IsZero() {
		e.T = time.Now()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.pending) >= maxPending {
		j.pending = j.pending[1:]
		j.dropped++
	}
	j.pending = append(j.pending, e)
}

// Renamed notes a rename (exchange: the two swapped), by paths relative
// to the filesystem's root.
func (j *Journal) Renamed(from, to string, exchange bool) {
	op := OpRename
	if exchange {
		op = OpExchange
	}
	j.Add(JournalEntry{Op: op, From: filepath.Clean(from), To: filepath.Clean(to)})
}

// Close writes what is pending (for up to flushBudget) and stops.
func (j *Journal) Close() {
	if j == nil {
		return
	}
	close(j.stop)
	<-j.done
}

func (j *Journal) run() {
	defer close(j.done)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			j.flush(context.Background())
		case <-j.stop:
			ctx, cancel := context.WithTimeout(context.Background(), flushBudget)
			defer cancel()
			if !j.flush(ctx) {
				j.mu.Lock()
				j.log.Error("namespace journal: changes not written at stop; a rebuild will not see them", "fs", j.fs, "changes", len(j.pending))
				j.mu.Unlock()
			}
			return
		}
	}
}

// flush writes the pending changes as one object; false if they stay.
func (j *Journal) flush(ctx context.Context) bool {
	j.mu.Lock()
	batch, dropped := j.pending, j.dropped
	j.pending, j.dropped = nil, 0
	j.mu.Unlock()
	if dropped > 0 {
		j.log.Error("namespace journal: the archive did not take changes for long; the oldest were dropped", "fs", j.fs, "dropped", dropped)
	}
	if len(batch) == 0 {
		return true
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range batch {
		enc.Encode(e)
	}
	key := archive.JournalKey(j.fs, j.source, batch[len(batch)-1].T)
	keys := j.keys
	if protect.Off(protect.SealNames) {
		keys = nil
	}
	blob, err := keys.SealBlob(key, buf.Bytes())
	if err == nil {
		_, err = j.arch.Put(ctx, key, bytes.NewReader(blob), int64(len(blob)))
	}
	if err != nil {
		j.log.Warn("namespace journal: batch not written; tried again", "fs", j.fs, "changes", len(batch), "reason", err)
		j.mu.Lock()
		j.pending = append(batch, j.pending...)
		j.mu.Unlock()
		return false
	}
	return true
}

// maxBatch bounds what a read of one journal batch accepts.
const maxBatch = 64 << 20

// ReadJournal reads every journal entry of filesystem fs, in time order,
// opening sealed batches with keys. Entries that do not parse or name
// paths outside the filesystem are skipped and counted; a batch sealed
// with a key not in keys is an error (seal.ErrNoKey).
func ReadJournal(ctx context.Context, a archive.Archive, fs string, keys *seal.Keyring) (entries []JournalEntry, bad int, err error) {
	var names []string
	err = a.List(ctx, archive.JournalPrefix+fs+"/", func(o archive.ObjectInfo) error {
		if !o.Incomplete {
			names = append(names, o.Key)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("namespace journal: %w", err)
	}
	for _, name := range names {
		blob, err := readBlob(ctx, a, name, maxBatch, keys)
		if err != nil {
			return nil, 0, fmt.Errorf("namespace journal: %w", err)
		}
		for line := range bytes.Lines(blob) {
			var e JournalEntry
			if json.Unmarshal(line, &e) != nil || !e.valid() {
				bad++
				continue
			}
			entries = append(entries, e)
		}
	}
	sort.SliceStable(entries, func(i, k int) bool { return entries[i].T.Before(entries[k].T) })
	return entries, bad, nil
}

// readBlob reads the whole object name (at most limit bytes) and opens
// it if it is sealed.
func readBlob(ctx context.Context, a archive.Archive, name string, limit int64, keys *seal.Keyring) ([]byte, error) {
	body, err := a.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	blob, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(blob)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, limit)
	}
	return keys.OpenBlob(name, blob)
}

// valid reports whether e is an entry that a rebuild may apply.
func (e *JournalEntry) valid() bool {
	local := func(p string) bool { return p != "" && filepath.IsLocal(p) }
	switch e.Op {
	case OpRename, OpExchange:
		return local(e.From) && local(e.To)
	case OpDelete, OpReplace:
		return e.Key != ""
	case OpPlace:
		return e.Key != "" && local(e.To)
	}
	return false
}
