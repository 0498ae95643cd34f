package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/stub"
)

// The randomized crash suite: a mixed workload (writes, rewrites,
// truncates, renames, hard links, unlinks, reads, and at the same time
// migrate, premigrate and recall by the admin) runs until the daemon is
// killed, at a random failpoint's Nth hit or at a random moment. After a
// restart every file must read back the bytes last written to it (those of
// an operation cut by the crash may be old or new, never unreadable), no
// name may appear that nothing created, and reconcile must find no orphan
// and no damaged stub once the DESTROY queue has drained.
//
// CASCADEFS_CRASH_TRIALS sets the number of trials (default 4 here, 100
// under `make crash`); CASCADEFS_CRASH_SEED replays a run;
// CASCADEFS_CRASH_REPORT names a file that gets the outcome table.

// singleNodePoints are the failpoints a single node reaches.
var singleNodePoints = []string{failpoint.MigrateAfterUpload, failpoint.MigrateAfterPremigrate,
	failpoint.MigrateBeforePunch, failpoint.MigrateInsidePunch, failpoint.RecallAfterWrite,
	failpoint.RecallBeforeRecord, failpoint.DestroyBeforeUnlink, failpoint.DestroyBeforeDelete, "moment"}

func crashTrials(def int) int {
	if n, err := strconv.Atoi(os.Getenv("CASCADEFS_CRASH_TRIALS")); err == nil && n > 0 {
		return n
	}
	return def
}

func crashSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("CASCADEFS_CRASH_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (CASCADEFS_CRASH_SEED=%d replays it)", seed, seed)
	return seed
}

// crashWorld is what a trial acts on: one daemon, or a cluster.
type crashWorld interface {
	mounts() []string // mount roots of the running nodes
	cli(args ...string) (string, string, error)
	// arm restarts what must be restarted so that the point kills the
	// process it is armed in at its hit-th hit ("moment": nothing armed).
	arm(point string, hit int)
	// died reports whether a process has died (or been killed).
	died() bool
	// fired reports whether a failpoint, not the test, killed a process.
	fired() bool
	// crash kills what a trial kills when no failpoint fired in time.
	crash(rng *rand.Rand)
	// recover restarts every dead process without failpoints and waits.
	recover()
	// destroysPending is the number of DESTROY entries not yet resolved.
	destroysPending() int
	backingDir() string
}

type crashFile struct {
	names     map[string]bool
	data      []byte
	uncertain bool // an operation on it failed: old or new bytes
	history   []string
}

func (f *crashFile) did(format string, args ...any) {
	if f != nil {
		f.history = append(f.history, time.Now().Format("05.000 ")+fmt.Sprintf(format, args...))
		if len(f.history) > 12 {
			f.history = f.history[1:]
		}
	}
}

// crashModel is what the files must hold.
type crashModel struct {
	mu     sync.Mutex
	byName map[string]*crashFile
	maybe  map[string]bool // names an operation that failed may have made
	// problems: wrong bytes read while the workload ran.
	problems []string
	backing  string // the backing directory, for the problem reports
}

func newCrashModel() *crashModel {
	return &crashModel{byName: map[string]*crashFile{}, maybe: map[string]bool{}}
}

func (m *crashModel) names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for n := range m.byName {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// crashNames: two directories, so that renames cross them.
var crashNames = func() []string {
	var out []string
	for i := range 10 {
		out = append(out, fmt.Sprintf("f%d", i), fmt.Sprintf("sub/g%d", i))
	}
	return out
}()

// userOp runs one random operation of a user through mount root, and
// applies it to the model. An operation that fails leaves its files
// uncertain.
func (m *crashModel) userOp(rng *rand.Rand, root string, failures *int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	name := crashNames[rng.IntN(len(crashNames))]
	p := filepath.Join(root, name)
	f := m.byName[name]
	fail := func(err error, files ...*crashFile) {
		if err == nil {
			return
		}
		*failures++
		for _, cf := range files {
			if cf != nil {
				cf.uncertain = true
			}
		}
	}
	switch op := rng.IntN(100); {
	case f == nil || op < 15: // write a whole new file
		size := []int{0, 1 + rng.IntN(64<<10), 1<<20 + rng.IntN(2<<20)}[rng.IntN(3)]
		data := make([]byte, size)
		fillRandom(rng, data)
		if f == nil {
			f = &crashFile{names: map[string]bool{name: true}}
			m.byName[name] = f
		}
		f.data = data // O_TRUNC: the same inode, every hard link sees it
		err := os.WriteFile(p, data, 0o644)
		f.did("write %s %d: %v", name, size, err)
		if err != nil {
			m.maybe[name] = true
		}
		fail(err, f)
	case op < 35: // rewrite a part
		off := rng.IntN(len(f.data) + 4096)
		patch := make([]byte, 1+rng.IntN(256<<10))
		fillRandom(rng, patch)
		if need := off + len(patch); need > len(f.data) {
			f.data = append(f.data, make([]byte, need-len(f.data))...)
		}
		copy(f.data[off:], patch)
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err == nil {
			_, err = w.WriteAt(patch, int64(off))
			err = errors.Join(err, w.Close())
		}
		f.did("rewrite %s [%d,+%d]: %v", name, off, len(patch), err)
		fail(err, f)
	case op < 45: // truncate
		size := rng.IntN(len(f.data) + 1)
		if rng.IntN(4) == 0 {
			size = len(f.data) + rng.IntN(64<<10)
		}
		if size <= len(f.data) {
			f.data = f.data[:size]
		} else {
			f.data = append(f.data, make([]byte, size-len(f.data))...)
		}
		err := os.Truncate(p, int64(size))
		f.did("truncate %s %d: %v", name, size, err)
		fail(err, f)
	case op < 55: // rename, maybe over another file
		to := crashNames[rng.IntN(len(crashNames))]
		if to == name {
			return
		}
		old := m.byName[to]
		if old == f {
			return // two links of one file: rename does nothing (POSIX)
		}
		if old != nil {
			delete(old.names, to)
		}
		delete(f.names, name)
		delete(m.byName, name)
		f.names[to] = true
		m.byName[to] = f
		err := os.Rename(p, filepath.Join(root, to))
		f.did("rename %s %s: %v", name, to, err)
		old.did("renamed over by %s -> %s: %v", name, to, err)
		if err != nil {
			m.maybe[name], m.maybe[to] = true, true
			fail(err, f, old)
		}
	case op < 62: // hard link
		to := crashNames[rng.IntN(len(crashNames))]
		if m.byName[to] != nil {
			return
		}
		f.names[to] = true
		m.byName[to] = f
		err := os.Link(p, filepath.Join(root, to))
		f.did("link %s %s: %v", name, to, err)
		if err != nil {
			m.maybe[to] = true
			fail(err, f)
		}
	case op < 70: // unlink
		delete(f.names, name)
		delete(m.byName, name)
		err := os.Remove(p)
		f.did("unlink %s: %v", name, err)
		if err != nil {
			m.maybe[name] = true
			fail(err, f)
		}
	default: // read and check
		got, err := os.ReadFile(p)
		if err == nil && !f.uncertain && !bytes.Equal(got, f.data) {
			at := 0
			for at < len(got) && at < len(f.data) && got[at] == f.data[at] {
				at++
			}
			bp := filepath.Join(m.backing, name)
			backing, _ := os.ReadFile(bp)
			rec, _ := stub.ReadRecordAt(bp)
			state := "resident"
			if rec != nil {
				state = rec.State.String()
			}
			end := at
			for end < len(got) && end < len(f.data) && got[end] != f.data[end] {
				end++
			}
			zeros := at < len(got) && bytes.Count(got[at:end], []byte{0}) == end-at
			m.problems = append(m.problems, fmt.Sprintf("%s: %s read %d bytes other than the %d written (differs in [%d,%d), read zeros there: %v; backing file %s, %d bytes, equal to the written: %v); history %q",
				root, name, len(got), len(f.data), at, end, zeros, state, len(backing), bytes.Equal(backing, f.data), f.history))
		}
	}
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

// verify checks the files through every mount against the model, then
// takes what a failed operation left as the new truth.
func (m *crashModel) verify(t *testing.T, mounts []string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	ok := true
	for _, root := range mounts {
		for name, f := range m.byName {
			got, err := os.ReadFile(filepath.Join(root, name))
			switch {
			case f.uncertain && errors.Is(err, fs.ErrNotExist):
			case err != nil:
				t.Errorf("%s: %s unreadable after the crash: %v", root, name, err)
				ok = false
			case !f.uncertain && !bytes.Equal(got, f.data):
				t.Errorf("%s: %s holds %d bytes other than the %d last written", root, name, len(got), len(f.data))
				ok = false
			}
		}
		for _, name := range listFiles(t, root) {
			if m.byName[name] == nil && !m.maybe[name] {
				t.Errorf("%s: %s exists, but nothing made it", root, name)
				ok = false
			}
		}
	}
	// Rebuild from what is there: the inode groups names, the bytes are read.
	byIno := map[uint64]*crashFile{}
	m.byName = map[string]*crashFile{}
	m.maybe = map[string]bool{}
	for _, name := range listFiles(t, mounts[0]) {
		p := filepath.Join(mounts[0], name)
		var st syscall.Stat_t
		data, err := os.ReadFile(p)
		if err != nil || syscall.Stat(p, &st) != nil {
			continue // reported above
		}
		f := byIno[st.Ino]
		if f == nil {
			f = &crashFile{names: map[string]bool{}, data: data}
			byIno[st.Ino] = f
		}
		f.names[name] = true
		m.byName[name] = f
	}
	return ok
}

func listFiles(t *testing.T, root string) []string {
	var out []string
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

type crashOutcome struct {
	point          string
	trials, fired  int
	passed, failed int
	ops, opErrors  int
}

// runCrashTrials runs the trials on w and reports a table.
func runCrashTrials(t *testing.T, w crashWorld, points []string, trials int, label string) {
	if only := os.Getenv("CASCADEFS_CRASH_POINTS"); only != "" { // to chase one failure
		points = strings.Split(only, ",")
	}
	rng := rand.New(rand.NewPCG(crashSeed(t), 0))
	model := newCrashModel()
	model.backing = w.backingDir()
	for _, root := range w.mounts() {
		os.MkdirAll(filepath.Join(root, "sub"), 0o755)
		break
	}
	outcomes := map[string]*crashOutcome{}
	for trial := range trials {
		point := points[rng.IntN(len(points))]
		hit := 1 + rng.IntN(3)
		o := outcomes[point]
		if o == nil {
			o = &crashOutcome{point: point}
			outcomes[point] = o
		}
		o.trials++
		w.arm(point, hit)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var ops, failures int
		_, provokes := w.(provoker)
		opsRng := rand.New(rand.NewPCG(rng.Uint64(), 1))
		adminRng := rand.New(rand.NewPCG(rng.Uint64(), 2))
		wg.Add(2)
		go func() { // the users
			defer wg.Done()
			root := ""
			for ctx.Err() == nil && (provokes || !w.died()) { // on one node, ops after a death fail without doing anything
				mounts := w.mounts()
				if len(mounts) == 0 {
					return
				}
				if !slices.Contains(mounts, root) {
					// One node per user: another node's kernel learns of a
					// name or size change within milliseconds, not at once,
					// and within its cache timeout (a second) when the node
					// that made it died before telling it. A user whose node
					// died moves on after that.
					if root != "" {
						time.Sleep(1100 * time.Millisecond)
					}
					root = mounts[opsRng.IntN(len(mounts))]
				}
				if !isFUSE(root) {
					continue // its node is going away
				}
				model.userOp(opsRng, root, &failures)
				ops++
			}
		}()
		go func() { // the admin
			defer wg.Done()
			for ctx.Err() == nil {
				names := model.names()
				mounts := w.mounts()
				if len(names) == 0 || len(mounts) == 0 {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				var args []string
				for range 1 + adminRng.IntN(4) {
					args = append(args, filepath.Join(mounts[adminRng.IntN(len(mounts))], names[adminRng.IntN(len(names))]))
				}
				switch adminRng.IntN(3) {
				case 0:
					w.cli(append([]string{"migrate"}, args...)...)
				case 1:
					w.cli(append([]string{"migrate", "--premigrate"}, args...)...)
				default:
					w.cli(append([]string{"recall"}, args...)...)
				}
			}
		}()
		limit := 4 * time.Second
		if point == "moment" {
			limit = time.Duration(200+rng.IntN(2000)) * time.Millisecond
		}
		deadline := time.Now().Add(limit)
		prov, _ := w.(provoker)
		provokeAt := time.Now().Add(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		for time.Now().Before(deadline) && !w.died() {
			if provokes && !provokeAt.IsZero() && time.Now().After(provokeAt) {
				prov.provoke(rng)
				provokeAt = time.Time{}
			}
			time.Sleep(10 * time.Millisecond)
		}
		if provokes && !provokeAt.IsZero() {
			prov.provoke(rng) // the point did not fire first: make its event now
			time.Sleep(2 * time.Second)
		}
		fired := w.fired()
		if !w.died() {
			w.crash(rng)
		}
		if p, ok := w.(pauser); ok {
			p.afterStop()
		}
		if provokes { // the survivors take over while users go on
			time.Sleep(1500 * time.Millisecond)
			fired = fired || w.fired() // a takeover point fires in this time
		}
		cancel()
		wg.Wait()
		if fired {
			o.fired++
		}
		o.ops += ops
		o.opErrors += failures
		w.recover()
		for _, p := range model.problems {
			t.Errorf("during trial %d: %s", trial, p)
		}
		readOK := len(model.problems) == 0
		model.problems = nil
		if model.verify(t, w.mounts()) && checkReconciled(t, w) && readOK {
			o.passed++
		} else {
			o.failed++
			t.Errorf("trial %d (%s @%d) failed", trial, point, hit)
			if o.failed > 3 {
				t.FailNow()
			}
		}
	}
	reportCrash(t, label, outcomes)
}

// checkReconciled waits for the DESTROY queue to drain, then asks
// reconcile for orphans and damaged stubs.
func checkReconciled(t *testing.T, w crashWorld) bool {
	deadline := time.Now().Add(60 * time.Second)
	for w.destroysPending() != 0 {
		if time.Now().After(deadline) {
			t.Errorf("DESTROY queue not drained after 60s")
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, stderr, err := w.cli("reconcile", "--json", "--dry-run", "--grace", "0s", w.mounts()[0])
	var rep migrate.ReconcileReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Errorf("reconcile: %v %v %s", err, jerr, stderr)
		return false
	}
	if rep.OrphanCount != 0 || rep.DamagedCount != 0 || rep.Incomplete != 0 {
		t.Errorf("reconcile after the crash: %d orphans %+v, %d damaged %+v, %d unreadable",
			rep.OrphanCount, rep.Orphans, rep.DamagedCount, rep.Damaged, rep.Incomplete)
		return false
	}
	return true
}

func reportCrash(t *testing.T, label string, outcomes map[string]*crashOutcome) {
	var b strings.Builder
	fmt.Fprintf(&b, "| %s: point | trials | fired at the point (killed or stopped) | passed | failed | user ops | user ops failed |\n| --- | --- | --- | --- | --- | --- | --- |\n", label)
	var keys []string
	for k := range outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var total crashOutcome
	for _, k := range keys {
		o := outcomes[k]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d |\n", k, o.trials, o.fired, o.passed, o.failed, o.ops, o.opErrors)
		total.trials += o.trials
		total.fired += o.fired
		total.passed += o.passed
		total.failed += o.failed
		total.ops += o.ops
		total.opErrors += o.opErrors
	}
	fmt.Fprintf(&b, "| all | %d | %d | %d | %d | %d | %d |\n", total.trials, total.fired, total.passed, total.failed, total.ops, total.opErrors)
	t.Log("\n" + b.String())
	if p := os.Getenv("CASCADEFS_CRASH_REPORT"); p != "" {
		f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, b.String())
			f.Close()
		}
	}
}

// provoker is a world in which some points need an event to fire.
type provoker interface {
	provoke(rng *rand.Rand)
}

// pauser is a world whose trials stop the owner rather than kill it:
// after the stop, the trial lets the users go on through the other nodes
// past the lease and the holds, then wakes the owner and lets it run on.
type pauser interface {
	afterStop()
}

// singleWorld is one `cascadefs mount` daemon.
type singleWorld struct {
	t    *testing.T
	d    *testenv.Daemon
	base []string
}

func (w *singleWorld) mounts() []string {
	if w.died() {
		return nil
	}
	return []string{w.d.Mountpoint}
}
func (w *singleWorld) cli(args ...string) (string, string, error) { return w.d.CLI(args...) }
func (w *singleWorld) died() bool                                 { return !w.d.Running() }
func (w *singleWorld) fired() bool                                { return w.died() }

func (w *singleWorld) arm(point string, hit int) {
	w.d.Stop()
	w.d.Env = append([]string(nil), w.base...)
	if point != "moment" {
		w.d.Env = append(w.d.Env, fmt.Sprintf("CASCADEFS_FAILPOINTS=%s=kill@%d", point, hit))
	}
	w.d.Start()
}

func (w *singleWorld) crash(*rand.Rand)   { w.d.Kill9() }
func (w *singleWorld) backingDir() string { return w.d.Backing }

func (w *singleWorld) recover() {
	w.d.Kill9() // reaps it if a failpoint killed it
	w.d.Env = append([]string(nil), w.base...)
	w.d.Start()
}

func (w *singleWorld) destroysPending() int {
	// status exits 1 while anything is unhealthy; its JSON still says
	// what each mount answered.
	out, _, _ := w.d.CLI("status", "--json")
	var rep struct{ Mounts []daemon.Status }
	if json.Unmarshal([]byte(out), &rep) != nil {
		return -1
	}
	for _, m := range rep.Mounts {
		if m.Mountpoint == w.d.Mountpoint {
			return m.PendingDestroy
		}
	}
	return -1
}

func TestCrashSuiteOneNode(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil, "--small-file", "65536", "--release-wait", "100ms")
	d.Start()
	runCrashTrials(t, &singleWorld{t: t, d: d}, singleNodePoints, crashTrials(4), "one node")
}

// clusterPoints: the data-path points fire on the owner (an unlink's on
// any node); takeover-before-commit on the node taking over after the
// owner is killed; handover-after-stop on an owner stopped with SIGTERM.
var clusterPoints = append(append([]string(nil), singleNodePoints...),
	failpoint.TakeoverBeforeCommit, failpoint.HandoverAfterStop)

// pausedOwnerPoints: where a paused-owner trial stops the owner (the data
// path; "moment": at a random moment).
var pausedOwnerPoints = []string{failpoint.MigrateAfterUpload, failpoint.MigrateBeforeRecord, failpoint.MigrateAfterPremigrate,
	failpoint.MigrateReleaseHeld, failpoint.MigrateAfterConfirm, failpoint.MigrateBeforePunch, failpoint.MigrateInsidePunch,
	failpoint.RecallBeforeWrite, failpoint.RecallAfterWrite, failpoint.RecallBeforeRecord, failpoint.DestroyBeforeDelete, "moment"}

// clusterWorld is three node processes sharing the filesystem.
type clusterWorld struct {
	t     *testing.T
	c     *testenv.Cluster
	names []string
	// pause: trials stop the owner (SIGSTOP at the point) instead of
	// killing it, and wake it after a takeover (pausedWorld).
	pause bool
	point string
	// killed: nodes the test killed this trial; stopped: nodes it sent
	// SIGTERM, with their count of clean unmounts before.
	killed  map[string]bool
	stopped map[string]int
	markers string // CASCADEFS_FAILPOINT_DIR for once- points
	// stoppedByTest: the node the test stopped (not a point).
	stoppedByTest *testenv.Node
}

func (w *clusterWorld) mounts() []string {
	var out []string
	for _, name := range w.names {
		// A stopped node's mount does not answer (statfs would hang).
		if n := w.c.Nodes[name]; n.Running() && !processStopped(n.PID()) && isFUSE(n.M("")) {
			out = append(out, n.M(""))
		}
	}
	return out
}

// isFUSE: the path is a live FUSE mount. A stopping node unmounts before
// it exits, and a user's operations must not land in the bare directory
// underneath.
// A node that stops itself at a point between the look at its process
// and the statfs leaves the statfs waiting until it goes on: after a
// second the mount counts as not answering.
func isFUSE(p string) bool {
	answer := make(chan bool, 1)
	go func() {
		var st syscall.Statfs_t
		answer <- syscall.Statfs(p, &st) == nil && st.Type == 0x65735546
	}()
	select {
	case ok := <-answer:
		return ok
	case <-time.After(time.Second):
		return false
	}
}

func (w *clusterWorld) cli(args ...string) (string, string, error) { return w.c.CLI(args...) }

func (w *clusterWorld) died() bool { return len(w.mounts()) < len(w.names) }

// stoppedAtPoint: a node stopped itself at its failpoint.
func (w *clusterWorld) stoppedAtPoint() bool {
	for _, name := range w.names {
		if n := w.c.Nodes[name]; n != w.stoppedByTest && n.Running() && processStopped(n.PID()) {
			return true
		}
	}
	return false
}

// fired: a node died that the test did not kill (one stopped with
// SIGTERM counts if it never reached its clean unmount).
func (w *clusterWorld) fired() bool {
	if w.pause {
		return w.stoppedAtPoint()
	}
	for _, name := range w.names {
		n := w.c.Nodes[name]
		if n.Running() || w.killed[name] {
			continue
		}
		if at, stopping := w.stopped[name]; stopping && strings.Count(n.Log(), "msg=unmounted") > at {
			continue
		}
		return true
	}
	return false
}

func (w *clusterWorld) kill(n *testenv.Node) {
	w.killed[n.Name] = true
	n.Kill9()
}

func (w *clusterWorld) owner() *testenv.Node {
	owner, _ := fsOwner(w.t, w.c, testenv.FSName)
	return w.c.Nodes[owner]
}

// restartAll stops every node and starts them again, the owner first,
// each with env(name).
func (w *clusterWorld) restartAll(env func(name string) []string) {
	var wg sync.WaitGroup
	for _, name := range w.names {
		wg.Add(1)
		go func(n *testenv.Node) {
			defer wg.Done()
			if n.Running() {
				n.Stop()
			} else {
				n.Kill9() // reap one a failpoint killed
			}
		}(w.c.Nodes[name])
	}
	wg.Wait()
	for _, name := range w.names {
		n := w.c.Nodes[name]
		n.Env = env(name)
		// Fresh ports: another process may have taken the old ones.
		n.Bind = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(w.t))
		n.RPC = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(w.t))
		n.Start()
	}
	// The first node owns the filesystem at the start of every trial.
	first := w.names[0]
	owner, _ := waitOwner(w.t, w.c, testenv.FSName, func(o string) bool { return o != "" && w.c.Nodes[o].Running() })
	if owner != first {
		w.c.MustCLI("failover", testenv.FSName, "--to", first, "--repo", w.c.Repo)
		waitOwner(w.t, w.c, testenv.FSName, func(o string) bool { return o == first })
	}
}

func (w *clusterWorld) arm(point string, hit int) {
	w.point = point
	w.killed, w.stopped, w.stoppedByTest = map[string]bool{}, map[string]int{}, nil
	if w.markers == "" {
		w.markers = w.t.TempDir()
	}
	os.Remove(filepath.Join(w.markers, point+".fired"))
	action := "kill"
	if w.pause {
		action = "stop"
	}
	spec := fmt.Sprintf("CASCADEFS_FAILPOINTS=%s=%s@%d", point, action, hit)
	w.restartAll(func(name string) []string {
		switch point {
		case "moment":
			return nil
		case failpoint.TakeoverBeforeCommit:
			// Both survivors: whichever wins the lock race dies at the
			// point, and the last takes the filesystem.
			if name == w.names[0] {
				return nil
			}
			return []string{fmt.Sprintf("CASCADEFS_FAILPOINTS=%s=once-kill@1", point),
				"CASCADEFS_FAILPOINT_DIR=" + w.markers}
		case failpoint.HandoverAfterStop:
			spec = fmt.Sprintf("CASCADEFS_FAILPOINTS=%s=kill@1", point) // one handover per stop
		}
		if name != w.names[0] { // the owner: the others take over after it dies
			return nil
		}
		return []string{spec}
	})
}

// provoke makes the event a point waits for: the owner killed (a
// takeover follows) or stopped (a handover follows).
func (w *clusterWorld) provoke(rng *rand.Rand) {
	switch w.point {
	case failpoint.TakeoverBeforeCommit:
		if o := w.owner(); o != nil && o.Running() {
			w.kill(o)
		}
	case failpoint.HandoverAfterStop:
		if o := w.owner(); o != nil && o.Running() {
			w.stopped[o.Name] = strings.Count(o.Log(), "msg=unmounted")
			o.Signal(syscall.SIGTERM) // the failpoint kills it during its handover
		}
	}
}

func (w *clusterWorld) crash(*rand.Rand) {
	if o := w.owner(); o != nil && o.Running() {
		if w.pause {
			w.stoppedByTest = o
			o.Pause()
			return
		}
		w.kill(o)
	}
}

// afterStop: with the owner stopped (by its point or by the test), the
// users go on through the others past the lease (2 s) and the holds
// (hold-lease 1s); then the owner wakes and runs on for a while.
func (w *clusterWorld) afterStop() {
	if !w.pause {
		return
	}
	time.Sleep(4 * time.Second)
	for _, name := range w.names {
		if n := w.c.Nodes[name]; n.Running() && processStopped(n.PID()) {
			n.Resume()
		}
	}
	time.Sleep(2 * time.Second)
}

func (w *clusterWorld) backingDir() string { return w.c.Backing }

func (w *clusterWorld) recover() {
	w.restartAll(func(string) []string { return nil })
}

func (w *clusterWorld) destroysPending() int {
	// status exits 1 while anything is unhealthy; its JSON still says
	// what each mount answered.
	out, _, _ := w.c.CLI("status", "--json")
	var rep struct{ Mounts []daemon.Status }
	if json.Unmarshal([]byte(out), &rep) != nil {
		return -1
	}
	pending, active := 0, false
	for _, m := range rep.Mounts {
		if m.State == "active" {
			active = true
			pending = max(pending, m.PendingDestroy)
		}
	}
	if !active {
		return -1
	}
	return pending
}

func TestCrashSuiteThreeNodes(t *testing.T) {
	trials := 2 // make test; make crash sets more
	if n, err := strconv.Atoi(os.Getenv("CASCADEFS_CRASH_CLUSTER_TRIALS")); err == nil && n > 0 {
		trials = n
	}
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "release-wait=100ms", "small-file=65536")
	c.Start("n1", "n2", "n3")
	runCrashTrials(t, &clusterWorld{t: t, c: c, names: []string{"n1", "n2", "n3"}}, clusterPoints, trials, "three nodes")
}

// Trials that stop the owner (SIGSTOP at a data-path point, or at a
// random moment) past its lease and the holds while users go on through
// the other nodes; another node takes over; then the old owner wakes and
// runs on. Every file must hold what the users wrote (old or new bytes
// where an operation failed), and nothing may leak or be damaged.
func TestCrashSuitePausedOwner(t *testing.T) {
	trials := 2 // make test; make crash sets more
	if n, err := strconv.Atoi(os.Getenv("CASCADEFS_CRASH_PAUSE_TRIALS")); err == nil && n > 0 {
		trials = n
	}
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "release-wait=100ms", "small-file=65536", "hold-lease=1s")
	c.Start("n1", "n2", "n3")
	runCrashTrials(t, &clusterWorld{t: t, c: c, names: []string{"n1", "n2", "n3"}, pause: true}, pausedOwnerPoints, trials, "three nodes, owner paused")
}
