package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/scrub"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Request is what an admin command asks of the daemon.
type Request struct {
	Paths      []string `json:"paths"` // relative to the mount root
	Recursive  bool     `json:"recursive"`
	Premigrate bool     `json:"premigrate,omitempty"`
	Jobs       int      `json:"jobs,omitempty"`
	All        bool     `json:"all,omitempty"` // cancel: every pending event
}

// Message is one line of a streamed answer (NDJSON).
type Message struct {
	Type  string   `json:"type"` // plan, file, done, error; progress, reconcile
	Files int      `json:"files,omitempty"`
	Bytes int64    `json:"bytes,omitempty"`
	Entry *Entry   `json:"entry,omitempty"`
	Error string   `json:"error,omitempty"`
	Sum   *Summary `json:"summary,omitempty"`

	Progress  *migrate.ReconcileProgress `json:"progress,omitempty"`
	Reconcile *migrate.ReconcileReport   `json:"reconcile,omitempty"`
	Scrub     *scrub.Report              `json:"scrub,omitempty"`  // progress and the final report
	Import    *migrate.ImportReport      `json:"import,omitempty"` // progress and the final report
}

// Summary closes a migrate or recall.
type Summary struct {
	Files   int     `json:"files"`
	Failed  int     `json:"failed"`
	Skipped int     `json:"skipped"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
}

// Entry is one file as `cascadefs ls` shows it.
type Entry struct {
	Path          string `json:"path"`
	State         string `json:"state"`
	Size          int64  `json:"size"`
	ResidentBytes int64  `json:"resident_bytes"`
	// Leader: of a migrated file, the bytes from its start that read
	// without a recall (the leader kept at release, or more once recalled).
	Leader int64  `json:"leader,omitempty"`
	Object string `json:"object,omitempty"`
	// SealedWith: the archive key that sealed the object (its ID).
	SealedWith string `json:"sealed_with,omitempty"`
	// Origin: an imported object's BUCKET/KEY (not of cascadefs's
	// writing); Unverified: it has no checksums yet.
	Origin     string `json:"origin,omitempty"`
	Unverified bool   `json:"unverified,omitempty"`
	Moved      int64  `json:"moved,omitempty"` // bytes uploaded (migrate) or recalled (recall)
	Error      string `json:"error,omitempty"`
	Skipped    string `json:"skipped,omitempty"`
}

// describe fills in what rec says of the file's archive copy.
func (e *Entry) describe(rec *stub.Record) {
	e.State, e.Object = rec.State.String(), rec.Key
	if rec.Sealed {
		e.SealedWith = seal.ID(rec.KeyID).String()
	}
	if rec.Imported {
		e.Object, e.Origin, e.Unverified = "", rec.OriginBucket+"/"+rec.OriginKey, rec.Unverified
	}
}

// Status is what `cascadefs status` shows of one mounted filesystem.
type Status struct {
	Name        string    `json:"name"`
	Source      string    `json:"source"`
	Mountpoint  string    `json:"mountpoint"`
	Backing     string    `json:"backing"`
	Archive     string    `json:"archive"`
	PID         int       `json:"pid"`
	Started     time.Time `json:"started"`
	Passthrough bool      `json:"passthrough"`
	SessionInfo
}

// ControlServer serves HTTP on a root-only control socket.
type ControlServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
}

// ServeControl serves handler on a control socket at path (ListenControl).
func ServeControl(path string, handler http.Handler) (*ControlServer, error) {
	ln, err := ListenControl(path)
	if err != nil {
		return nil, err
	}
	c := &ControlServer{path: path, ln: ln, srv: &http.Server{Handler: handler}}
	go c.srv.Serve(ln)
	return c, nil
}

// Close stops serving (calls in progress get 2 s) and removes the socket.
func (c *ControlServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.srv.Shutdown(ctx)
	os.Remove(c.path)
}

// UnixClient is an HTTP client whose every request goes to the unix
// socket sock (the URL's host is ignored); timeout 0 means none.
func UnixClient(sock string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// ListenControl opens a root-only control socket at path, refusing one
// that another live process answers on (a leftover of a dead one goes).
// The socket never exists with looser permissions, not even for a moment:
// it is made in a private directory, restricted, then renamed into place.
func ListenControl(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := checkRunDir(dir); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is already served (its control socket %s answers)", strings.TrimSuffix(filepath.Base(path), ".sock"), path)
	}
	private, err := os.MkdirTemp(dir, ".new-")
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer os.RemoveAll(private)
	if err := os.Chmod(private, 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	tmp := filepath.Join(private, "sock")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // it is renamed; Close removes the final path
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// Root only: the admin commands act on any file.
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	os.Remove(path)
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return ln, nil
}

// checkRunDir refuses a directory of control sockets that someone other
// than this user could write to: they could put their own socket in place.
func checkRunDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return fmt.Errorf("control socket directory %s is owned by uid %d with mode %o: want owner uid %d, not writable by others", dir, st.Uid, st.Mode&0o7777, os.Geteuid())
	}
	return nil
}

func startControl(d *Mount) (*ControlServer, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /migrate", d.serveMigrate)
	mux.HandleFunc("POST /recall", d.serveRecall)
	mux.HandleFunc("POST /ls", d.serveLs)
	mux.HandleFunc("POST /plan", d.servePlan)
	mux.HandleFunc("POST /reconcile", d.serveReconcile)
	mux.HandleFunc("POST /scrub", d.serveScrub)
	mux.HandleFunc("GET /df", d.serveDF)
	mux.HandleFunc("POST /cancel", d.serveCancel)
	mux.HandleFunc("POST /kept", d.serveKept)
	mux.HandleFunc("POST /undelete", d.serveUndelete)
	mux.HandleFunc("POST /import", d.serveImport)
	if failpoint.Enabled { // test builds: the tests' cache drop, scoped to their mounts
		mux.HandleFunc("POST /drop-caches", func(w http.ResponseWriter, r *http.Request) { d.fs.DropCaches() })
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), StatusBudget)
		defer cancel()
		json.NewEncoder(w).Encode(d.Status(ctx))
	})
	// Another daemon's mount may have the same name (it uses another run
	// directory): a request for it must not act on this one.
	this := strconv.FormatUint(d.dev, 10)
	checked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if dev := r.Header.Get(mountDevHeader); dev != "" && dev != this {
			http.Error(w, "this daemon serves another mount of that name", http.StatusMisdirectedRequest)
			return
		}
		mux.ServeHTTP(w, r)
	})
	return ServeControl(SocketPath(d.cfg.RunDir, d.cfg.Source), checked)
}

// StatusBudget bounds how long a daemon takes to answer a status: the
// session's owner may be another node, stopped or cut off.
const StatusBudget = 1500 * time.Millisecond

// Within runs fn, giving up on it after d (it runs on; its result is
// lost): what a daemon asks of a peer or the repository for a status
// must not hold the answer.
func Within[T any](d time.Duration, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() { v, err := fn(); ch <- result{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(d):
		var zero T
		return zero, fmt.Errorf("no answer within %v", d)
	}
}

// Status reports the filesystem's state; a session that does not answer
// within the budget is marked so.
func (d *Mount) Status(ctx context.Context) Status {
	si, err := Within(StatusBudget, func() (SessionInfo, error) { return d.dm.Session(ctx), nil })
	if err != nil {
		si = SessionInfo{State: "the DM session did not answer in time"}
	}
	return Status{
		Name: d.cfg.Name, Source: d.cfg.Source, Mountpoint: d.cfg.Mountpoint, Backing: d.cfg.Backing, Archive: d.archive,
		PID: os.Getpid(), Started: d.started, Passthrough: d.fs.Passthrough(), SessionInfo: si,
	}
}

// target is a regular file an admin request names, as found.
type target struct {
	rel  string
	ino  uint64
	size int64
}

// expand checks every path first (so bad input changes nothing) and lists
// the regular files they name, never through a symlink.
func (d *Mount) expand(req *Request) ([]target, error) {
	var files []target
	for _, p := range req.Paths {
		rel, err := beneath.Clean(p)
		if err != nil {
			return nil, fmt.Errorf("%s: outside the filesystem", p)
		}
		st, err := d.root.Lstat(rel)
		switch {
		case errors.Is(err, beneath.ErrSymlink):
			return nil, fmt.Errorf("%s: goes through a symlink", p)
		case err != nil:
			return nil, fmt.Errorf("%s: no such file or directory", p)
		case st.Mode&unix.S_IFMT == unix.S_IFDIR && !req.Recursive:
			return nil, fmt.Errorf("%s: is a directory (use -r)", p)
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			err := d.root.Walk(rel, func(rel string, st *unix.Stat_t) error {
				if st.Mode&unix.S_IFMT == unix.S_IFREG {
					files = append(files, target{rel, st.Ino, st.Size})
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		case st.Mode&unix.S_IFMT == unix.S_IFREG:
			files = append(files, target{rel, st.Ino, st.Size})
		default:
			return nil, fmt.Errorf("%s: not a regular file", p)
		}
	}
	return files, nil
}

// request decodes an admin request and lists its files; bad input is
// answered with 400 and ok false, before anything is done.
func (d *Mount) request(w http.ResponseWriter, r *http.Request) (req *Request, files []target, ok bool) {
	req = &Request{}
	if err := json.NewDecoder(r.Body).Decode(req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return nil, nil, false
	}
	files, err := d.expand(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, nil, false
	}
	return req, files, true
}

func rels(files []target) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.rel
	}
	return out
}

func (d *Mount) serveMigrate(w http.ResponseWriter, r *http.Request) {
	d.serveBatch(w, r, func(ctx context.Context, req *Request, t target) Entry {
		rel := t.rel
		res, err := d.dm.Migrate(ctx, rel, t.ino, req.Premigrate)
		e := Entry{Path: rel, State: res.State.String(), Moved: res.Uploaded, Object: res.Key}
		if errors.Is(err, dmapi.ErrBusy) {
			e.Skipped = fmt.Sprintf("still open (%v); data not released", err)
		} else if err != nil {
			e.Error = err.Error()
		}
		return e
	})
}

func (d *Mount) serveRecall(w http.ResponseWriter, r *http.Request) {
	d.serveBatch(w, r, func(ctx context.Context, req *Request, t target) Entry {
		rel := t.rel
		e := d.inspect(rel)
		if e.Error != "" || e.State != stub.Migrated.String() {
			return e
		}
		ev := &dmapi.Event{Type: dmapi.Read, FS: d.cfg.Name, Path: rel, Offset: 0, Length: -1, Priority: dmapi.PriorityAdmin}
		if err := d.identify(ev); err != nil {
			e.Error = fmt.Sprintf("recall %s: %v", rel, err)
			return e
		}
		if err := d.dm.Raise(ctx, ev); err != nil {
			e.Error = fmt.Sprintf("recall %s: %v", rel, err)
			return e
		}
		before := e.ResidentBytes
		e = d.inspect(rel)
		e.Moved = e.ResidentBytes - before
		return e
	})
}

// serveBatch runs fn over the request's files with bounded parallelism and
// streams the results.
func (d *Mount) serveBatch(w http.ResponseWriter, r *http.Request, fn func(context.Context, *Request, target) Entry) {
	req, files, ok := d.request(w, r)
	if !ok {
		return
	}
	out := newStream(w)
	var total int64
	for _, f := range files {
		total += f.size
	}
	out.send(Message{Type: "plan", Files: len(files), Bytes: total})
	jobs := max(1, min(req.Jobs, 64))
	start := time.Now()
	work := make(chan target)
	var wg sync.WaitGroup
	sum := Summary{}
	var mu sync.Mutex
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				e := fn(r.Context(), req, t)
				mu.Lock()
				switch {
				case e.Error != "":
					sum.Failed++
				case e.Skipped != "":
					sum.Skipped++
				default:
					sum.Files++
					sum.Bytes += e.Moved
				}
				mu.Unlock()
				out.send(Message{Type: "file", Entry: &e})
			}
		}()
	}
	for _, f := range files {
		select {
		case work <- f:
		case <-r.Context().Done():
		}
	}
	close(work)
	wg.Wait()
	sum.Seconds = time.Since(start).Seconds()
	out.send(Message{Type: "done", Sum: &sum})
}

// serveReconcile runs a reconcile on the owner and streams its progress
// (at most one message a second), then the report.
func (d *Mount) serveReconcile(w http.ResponseWriter, r *http.Request) {
	var opt migrate.ReconcileOptions
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&opt); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if opt.Grace < 0 {
		http.Error(w, "grace must not be negative", http.StatusBadRequest)
		return
	}
	out := newStream(w)
	var last time.Time
	var mu sync.Mutex
	rep, err := d.dm.Reconcile(r.Context(), opt, func(p migrate.ReconcileProgress) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) >= time.Second || p.Phase != "walk" && p.Phase != "list" {
			last = time.Now()
			out.send(Message{Type: "progress", Progress: &p})
		}
	})
	if err != nil {
		out.send(Message{Type: "error", Error: err.Error(), Reconcile: rep})
		return
	}
	out.send(Message{Type: "reconcile", Reconcile: rep})
}

// serveScrub runs a scrub on the owner and streams its progress (at most
// one message a second), then the report.
func (d *Mount) serveScrub(w http.ResponseWriter, r *http.Request) {
	var opt scrub.Options
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&opt); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if opt.Rate < 0 || len(opt.Paths) == 0 {
		http.Error(w, "bad request: paths and a rate of at least 0 are needed", http.StatusBadRequest)
		return
	}
	for _, p := range opt.Paths {
		if p != "." && !filepath.IsLocal(p) {
			http.Error(w, "bad request: "+p+" is not inside the filesystem", http.StatusBadRequest)
			return
		}
	}
	out := newStream(w)
	var last time.Time
	var mu sync.Mutex
	rep, err := d.dm.Scrub(r.Context(), opt, func(p scrub.Report) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) >= time.Second {
			last = time.Now()
			p.Bad = nil
			out.send(Message{Type: "progress", Scrub: &p})
		}
	})
	if err != nil {
		out.send(Message{Type: "error", Error: err.Error(), Scrub: rep})
		return
	}
	out.send(Message{Type: "scrub", Scrub: rep})
}

// serveCancel cancels the pending events on the files (or under the
// directories) named, or all of them, on the filesystem's owner.
func (d *Mount) serveCancel(w http.ResponseWriter, r *http.Request) {
	var req Request
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	cr := CancelRequest{All: req.All}
	for _, p := range req.Paths {
		rel, err := beneath.Clean(p)
		if err != nil {
			http.Error(w, fmt.Sprintf("%s: outside the filesystem", p), http.StatusBadRequest)
			return
		}
		cr.Paths = append(cr.Paths, rel)
		if st, err := d.root.Lstat(rel); err == nil {
			cr.Inos = append(cr.Inos, st.Ino) // renamed since its event: still found
		}
	}
	if len(cr.Paths) == 0 && !cr.All {
		http.Error(w, "name the files whose recalls to cancel, or all", http.StatusBadRequest)
		return
	}
	evs, err := d.dm.Cancel(r.Context(), cr)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if evs == nil {
		evs = []dmapi.Event{}
	}
	json.NewEncoder(w).Encode(evs)
}

// DF is what `cascadefs df` shows of one filesystem: its files by state,
// what the archive holds for them, and its space against the thresholds.
type DF struct {
	Name       string `json:"name"`
	Mountpoint string `json:"mountpoint"`
	migrate.Tally
	dmapi.Space
	High       int           `json:"high"`
	Low        int           `json:"low"`
	Incomplete int64         `json:"incomplete"` // entries the walk could not read
	Duration   time.Duration `json:"duration_ns"`
}

// serveKept lists the deleted and replaced versions kept for the
// retention under each of req.Paths (which need not exist any more).
func (d *Mount) serveKept(w http.ResponseWriter, r *http.Request) {
	var req Request
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	out := []migrate.KeptVersion{}
	for _, rel := range req.Paths {
		if rel = filepath.Clean(rel); !filepath.IsLocal(rel) {
			http.Error(w, "bad path "+rel, http.StatusBadRequest)
			return
		}
		kept, err := d.garbage.Kept(rel)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out = append(out, kept...)
	}
	json.NewEncoder(w).Encode(out)
}

// serveImport makes stubs for the objects under a URL (on the owner),
// streaming progress about once a second.
func (d *Mount) serveImport(w http.ResponseWriter, r *http.Request) {
	var req migrate.ImportRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	out := newStream(w)
	var last time.Time
	rep, err := d.dm.Import(r.Context(), req, func(p migrate.ImportReport) {
		if time.Since(last) >= time.Second {
			last = time.Now()
			p.Problems = nil
			out.send(Message{Type: "progress", Import: &p})
		}
	})
	if err != nil {
		out.send(Message{Type: "error", Error: err.Error(), Import: rep})
		return
	}
	out.send(Message{Type: "import", Import: rep})
}

// serveUndelete brings a kept version back (on the owner).
func (d *Mount) serveUndelete(w http.ResponseWriter, r *http.Request) {
	var req migrate.UndeleteRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	v, err := d.dm.Undelete(r.Context(), req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	json.NewEncoder(w).Encode(v)
}

// policy is the space monitor's current policy.
func (d *Mount) policy() migrate.Policy {
	if d.cfg.Policy != nil {
		return d.cfg.Policy()
	}
	return d.cfg.Settings.Policy
}

// serveDF walks the backing tree (any node can: the records are in it)
// and reads every file's stub record; nothing is changed.
func (d *Mount) serveDF(w http.ResponseWriter, r *http.Request) {
	policy := d.policy()
	scan, err := policy.Scan(r.Context(), d.root, migrate.ScanOptions{Tally: true}, time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	sp, err := migrate.SpaceOf(d.root, &policy, scan)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	json.NewEncoder(w).Encode(DF{Name: d.cfg.Name, Mountpoint: d.cfg.Mountpoint, Tally: *scan.Tally, Space: sp,
		High: policy.High, Low: policy.Low, Incomplete: scan.Incomplete, Duration: scan.Duration})
}

// servePlan answers `migrate --dry-run`: what the space monitor's policy
// would pick among the files, in order, and why the others not.
func (d *Mount) servePlan(w http.ResponseWriter, r *http.Request) {
	_, files, ok := d.request(w, r)
	if !ok {
		return
	}
	policy := d.policy()
	json.NewEncoder(w).Encode(policy.Plan(d.root, rels(files), time.Now()))
}

func (d *Mount) serveLs(w http.ResponseWriter, r *http.Request) {
	_, files, ok := d.request(w, r)
	if !ok {
		return
	}
	entries := make([]Entry, 0, len(files))
	for _, f := range files {
		entries = append(entries, d.inspect(f.rel))
	}
	json.NewEncoder(w).Encode(entries)
}

// inspect reads a file's state without raising any event.
func (d *Mount) inspect(rel string) Entry {
	e := Entry{Path: rel}
	fd, err := d.root.OpenFD(rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOATIME)
	if err != nil {
		e.Error = err.Error()
		return e
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		e.Error = err.Error()
		return e
	}
	e.Size = st.Size
	rec, err := stub.ReadRecord(fd)
	if err != nil {
		e.State, e.Error = "damaged", err.Error()
		return e
	}
	e.ResidentBytes = st.Size
	switch {
	case rec == nil:
		e.State = stub.Resident.String()
	case rec.State == stub.Premigrated && !rec.Unchanged(&st):
		e.State = stub.Resident.String() // changed since the copy: the copy is stale
	case rec.State == stub.Premigrated:
		e.describe(rec)
	default:
		e.describe(rec)
		if e.ResidentBytes, err = stub.ResidentBytes(fd, st.Size); err != nil {
			e.Error = err.Error()
		}
		if e.Leader, err = stub.FirstMissing(fd, rec, 0, st.Size); err != nil {
			e.Error = err.Error()
		}
	}
	return e
}

// identify fills in the inode and file handle of an event raised for a path.
func (d *Mount) identify(ev *dmapi.Event) error {
	fd, err := d.root.OpenFD(ev.Path, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	ev.Ino = st.Ino
	ev.Handle, _ = stub.HandleOf(fd)
	return nil
}

// stream writes NDJSON messages, flushed one by one.
type stream struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	enc *json.Encoder
}

func newStream(w http.ResponseWriter) *stream {
	w.Header().Set("Content-Type", "application/x-ndjson")
	return &stream{w: w, enc: json.NewEncoder(w)}
}

func (s *stream) send(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enc.Encode(m)
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}
