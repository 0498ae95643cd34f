package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/migrate"
)

// spaceOf reads the space monitor's state from `cascadefs status --json`.
func spaceOf(t *testing.T, cli func(...string) string) *migrate.SpaceStatus {
	t.Helper()
	var rep struct {
		Mounts []daemon.Status `json:"mounts"`
	}
	out := cli("status", "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(rep.Mounts) != 1 || rep.Mounts[0].Space == nil {
		t.Fatalf("status shows no space monitor:\n%s", out)
	}
	return rep.Mounts[0].Space
}

// A filesystem filled past its high threshold: the monitor brings usage
// under the low threshold by migrating the least recently used files that
// the policy allows, premigrates the next ones, releases those first when
// a writer hits the quota, and that writer succeeds; a writer that needs
// more than can be freed gets ENOSPC. Every file reads back whole.
func TestSpaceMonitorKeepsTheQuota(t *testing.T) {
	testenv.RequireRoot(t)
	archives(t, func(t *testing.T, newDaemon func(...string) *testenv.Daemon) {
		const mib = 1 << 20
		d := newDaemon("--quota", "10MiB", "--high", "70", "--low", "40", "--interval", "300ms",
			"--min-age", "1h", "--exclude", "*.keep", "--premigrate", "10", "--metrics", "127.0.0.1:0")
		want := map[string][32]byte{}
		os.Mkdir(d.M("old"), 0o755)
		// old/f0 is the least recently used; none of them may move before
		// its times are set (all are within min-age when written).
		var order []string
		for i := range 6 {
			name := fmt.Sprintf("old/f%d", i)
			want[name] = writeRandom(t, d.M(name), mib)
			order = append(order, name)
		}
		want["young"] = writeRandom(t, d.M("young"), mib)
		want["x.keep"] = writeRandom(t, d.M("x.keep"), mib)
		for i, name := range append(order, "x.keep") {
			when := time.Now().Add(-time.Duration(20-i) * 24 * time.Hour)
			if err := os.Chtimes(d.M(name), when, when); err != nil {
				t.Fatal(err)
			}
		}
		// 8 MiB of 10: over high (70%); the cycle must go under low (4 MiB).
		testenv.WaitFor(t, "a cycle", 30*time.Second, func() bool { return spaceOf(t, d.MustCLI).LastCycle != nil })
		sp := spaceOf(t, d.MustCLI)
		if sp.Usage > 4*mib {
			t.Fatalf("usage %d after the cycle, over low (4 MiB): %+v", sp.Usage, sp.LastCycle)
		}
		states := ls(t, d, d.M(""))
		stateOf := func(rel string) string { return states[d.M(rel)].State }
		for _, rel := range []string{"young", "x.keep"} {
			if stateOf(rel) != "resident" {
				t.Errorf("%s is %s: the policy must never pick it", rel, stateOf(rel))
			}
		}
		// The migrated files are the oldest ones, in order.
		migrated := 0
		for _, rel := range order {
			if stateOf(rel) == "migrated" {
				migrated++
			}
		}
		for i, rel := range order {
			if (i < migrated) != (stateOf(rel) == "migrated") {
				t.Fatalf("not least recently used first: %v", statesIn(order, stateOf))
			}
		}
		if migrated < 4 || migrated == 6 {
			t.Fatalf("%d files migrated, want 4 or 5: %v", migrated, statesIn(order, stateOf))
		}
		// Then the next candidate is premigrated (10% of 10 MiB).
		next := order[migrated]
		if stateOf(next) != "premigrated" {
			t.Fatalf("%s is %s after the cycle, want premigrated: %v", next, stateOf(next), statesIn(order, stateOf))
		}
		text := d.MustCLI("status")
		for _, s := range []string{"space:", "of quota 10.0 MiB", "last cycle", "next candidates", next} {
			if !strings.Contains(text, s) {
				t.Errorf("status lacks %q:\n%s", s, text)
			}
		}

		// A writer past the quota waits for a cycle, which releases the
		// premigrated file first, and succeeds.
		want["new"] = writeRandom(t, d.M("new"), 7*mib+mib/2)
		if s := state(t, d, next).State; s != "migrated" {
			t.Errorf("premigrated %s is %s after the out-of-space cycle", next, s)
		}
		// A writer that needs more than the monitor can free gets ENOSPC.
		f, err := os.Create(d.M("huge"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.CopyN(f, zeros{}, 20*mib)
		f.Close()
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("writing 20 MiB into a 10 MiB quota: %v, want ENOSPC", err)
		}
		os.Remove(d.M("huge"))
		if !strings.Contains(d.Log(), "write refused: out of space") {
			t.Error("the refused write is not in the log")
		}

		testenv.DropCaches()
		for rel, sum := range want {
			if sumFile(t, d.M(rel)) != sum {
				t.Errorf("%s reads back wrong", rel)
			}
		}

		// The node's metrics say the same (a recall's commit comes after
		// its reader was served).
		testenv.WaitFor(t, "the recalls' commits", 20*time.Second, func() bool {
			return scrape(t, d.Log())[`cascadefs_recalled_files_total{fs="t1"}`] >= float64(migrated+1)
		})
		m := scrape(t, d.Log())
		for name, atLeast := range map[string]float64{
			`cascadefs_migrated_files_total{fs="t1"}`: float64(migrated + 1),
			`cascadefs_migrated_bytes_total{fs="t1"}`: float64(migrated+1) * mib,
			`cascadefs_recalled_files_total{fs="t1"}`: float64(migrated + 1),
			`cascadefs_recalled_bytes_total{fs="t1"}`: float64(migrated+1) * mib,
			`cascadefs_recall_seconds_count{fs="t1"}`: float64(migrated + 1),
			`cascadefs_space_cycles_total{fs="t1"}`:   2,
			`cascadefs_capacity_bytes{fs="t1"}`:       10 * mib,
			`cascadefs_usage_bytes{fs="t1"}`:          mib,
		} {
			if m[name] < atLeast {
				t.Errorf("metric %s = %v, want at least %v", name, m[name], atLeast)
			}
		}
	})
}

// scrape reads the Prometheus endpoint that a daemon's log announces.
func scrape(t *testing.T, log string) map[string]float64 {
	t.Helper()
	i := strings.Index(log, `msg="serving metrics"`)
	j := strings.Index(log[max(i, 0):], "addr=")
	if i < 0 || j < 0 {
		t.Fatalf("no metrics endpoint in the log")
	}
	url := strings.Fields(log[i+j+len("addr="):])[0]
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(line, "#") {
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func statesIn(order []string, stateOf func(string) string) []string {
	var s []string
	for _, rel := range order {
		s = append(s, rel+"="+stateOf(rel))
	}
	sort.Strings(s)
	return s
}

// `migrate --dry-run` shows what the policy would pick, in order, and why
// not the others, and changes nothing.
func TestMigrateDryRun(t *testing.T) {
	testenv.RequireRoot(t)
	d := testenv.NewDaemon(t, "", nil, "--min-age", "1h", "--exclude", "*.keep,skip", "--min-size", "100")
	d.Start()
	os.MkdirAll(d.M("skip"), 0o755)
	files := map[string]time.Duration{"old": 10, "older": 20, "young": 0, "a.keep": 30, "tiny": 30, "pre": 1, "skip/x": 30}
	for rel, days := range files {
		size := int64(64 << 10)
		if rel == "tiny" {
			size = 5
		}
		writeRandom(t, d.M(rel), size)
		when := time.Now().Add(-days * 24 * time.Hour)
		os.Chtimes(d.M(rel), when, when)
	}
	d.MustCLI("migrate", "--premigrate", d.M("pre"))
	before := ls(t, d, d.M(""))

	var verdicts []migrate.Verdict
	out := d.MustCLI("migrate", "--dry-run", "-r", "--json", d.M(""))
	if err := json.Unmarshal([]byte(out), &verdicts); err != nil {
		t.Fatalf("dry-run output: %v\n%s", err, out)
	}
	var order []string
	skips := map[string]string{}
	for _, v := range verdicts {
		rel := strings.TrimPrefix(v.Path, d.M("")+"/")
		if v.Skip == "" {
			order = append(order, rel)
		} else {
			skips[rel] = v.Skip
		}
	}
	if got := strings.Join(order, " "); got != "pre older old" {
		t.Errorf("dry run picks %q, want premigrated first, then least recently used: %q", got, "pre older old")
	}
	for rel, why := range map[string]string{"young": "within min-age", "a.keep": "excluded by *.keep", "tiny": "smaller than min-size", "skip/x": "excluded by skip"} {
		if !strings.Contains(skips[rel], why) {
			t.Errorf("%s skipped for %q, want %q", rel, skips[rel], why)
		}
	}
	text := d.MustCLI("migrate", "--dry-run", "-r", d.M(""))
	if !strings.Contains(text, "would pick 3 of 7") || !strings.Contains(text, "premigrated: instant release") {
		t.Errorf("dry run text:\n%s", text)
	}
	if after := ls(t, d, d.M("")); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a dry run changed states:\nbefore %v\nafter  %v", before, after)
	}
	if _, stderr, err := d.CLI("migrate", "--dry-run", d.M("nonexistent")); err == nil || !strings.Contains(stderr, "no such file") {
		t.Errorf("dry run of a missing path: err %v, stderr %q", err, stderr)
	}
}

// The owner is killed in the middle of a cycle (its uploads hang on a
// paused MinIO): the new owner's monitor carries on. While the killed node
// is down nobody can confirm a file is closed there, so the monitor only
// premigrates; once an admin expels it, the releases bring usage under the
// low threshold, least recently used first. Every file reads back whole,
// also through the expelled node once it starts again.
func TestSpaceMonitorMovesWithFailover(t *testing.T) {
	m := testenv.StartMinIO(t)
	c := testenv.NewCluster(t, m.Bucket(t, "hsm"), m.EnvList(), "n1", "n2")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "quota=20MiB", "high=60", "low=30", "interval=300ms", "min-age=1h")
	for _, n := range c.Nodes {
		n.Args = []string{"--metrics", "127.0.0.1:0"}
	}
	c.Start("n1", "n2")
	owner, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o != "" })
	other := "n2"
	if owner == "n2" {
		other = "n1"
	}
	const mib = 1 << 20
	want := map[string][32]byte{}
	var order []string
	for i := range 16 {
		name := fmt.Sprintf("f%02d", i)
		want[name] = writeRandom(t, c.Nodes[other].M(name), mib)
		order = append(order, name)
	}
	m.Pause() // the owner's cycle will hang in its uploads
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	for i, name := range order { // f00 least recently used
		when := time.Now().Add(-time.Duration(30-i) * 24 * time.Hour)
		if err := os.Chtimes(c.Nodes[other].M(name), when, when); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second) // the owner's monitor sees 80% and starts its cycle
	c.Nodes[owner].Kill9()
	m.Resume()
	resumed = true
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == other })

	survivor := c.Nodes[other]
	var sp *migrate.SpaceStatus
	testenv.WaitFor(t, "a blocked cycle on the new owner", 60*time.Second, func() bool {
		sp = clusterSpace(t, c, testenv.FSName+"@"+other)
		return sp != nil && sp.LastCycle != nil && strings.Contains(sp.LastCycle.Blocked, "node "+owner+" is failed")
	})
	if sp.Usage < 16*mib {
		t.Fatalf("data released while %s was down: usage %d", owner, sp.Usage)
	}
	// An alive node cannot be expelled; the dead one can, by an admin who
	// knows it is down, and the releases go on without it.
	if _, e, err := c.CLI("expel", other); err == nil {
		t.Fatalf("expel of the alive node %s accepted: %q", other, e)
	}
	c.MustCLI("expel", owner)
	testenv.WaitFor(t, "usage under low on the new owner", 60*time.Second, func() bool {
		sp = clusterSpace(t, c, testenv.FSName+"@"+other)
		return sp != nil && sp.LastCycle != nil && sp.Usage <= 20*mib*30/100
	})
	if !strings.Contains(survivor.Log(), "space monitor cycle") {
		t.Fatalf("%s logs no cycle", other)
	}
	states := map[string]string{}
	var list []daemon.Entry
	out := c.MustCLI("ls", "-r", "--json", survivor.M(""))
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		states[strings.TrimPrefix(e.Path, survivor.M("")+"/")] = e.State
	}
	migrated := 0
	for _, name := range order {
		if states[name] == "migrated" {
			migrated++
		}
	}
	for i, name := range order {
		if (i < migrated) != (states[name] == "migrated") {
			t.Fatalf("not least recently used first: %v", statesIn(order, func(s string) string { return states[s] }))
		}
	}
	if migrated < 10 {
		t.Fatalf("%d files migrated; 16 MiB must go under 6 MiB", migrated)
	}
	// New thresholds apply to the running monitor, without a restart.
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "high=20", "low=5")
	testenv.WaitFor(t, "the new thresholds applied", 30*time.Second, func() bool {
		sp = clusterSpace(t, c, testenv.FSName+"@"+other)
		return sp != nil && sp.High == 20 && sp.Usage <= 20*mib*5/100
	})
	testenv.DropCaches()
	for name, sum := range want {
		if sumFile(t, survivor.M(name)) != sum {
			t.Errorf("%s reads back wrong after the failover", name)
		}
	}
	c.Nodes[owner].Start() // the expelled node rejoins
	if sumFile(t, c.Nodes[owner].M(order[0])) != want[order[0]] {
		t.Errorf("%s reads back wrong through the node that rejoined", order[0])
	}
	// The new owner's metrics count its takeover, its cycles and the space.
	got := scrape(t, survivor.Log())
	for name, atLeast := range map[string]float64{
		`cascadefs_takeovers_total{fs="fs1"}`:      1,
		`cascadefs_space_cycles_total{fs="fs1"}`:   1,
		`cascadefs_migrated_files_total{fs="fs1"}`: float64(migrated),
		`cascadefs_capacity_bytes{fs="fs1"}`:       20 * mib,
	} {
		if got[name] < atLeast {
			t.Errorf("%s metric %s = %v, want at least %v", other, name, got[name], atLeast)
		}
	}
}

// clusterSpace reads the space monitor's state shown by the mount with
// the given source (a dead node's mount makes status exit 1: ignored).
func clusterSpace(t *testing.T, c *testenv.Cluster, source string) *migrate.SpaceStatus {
	t.Helper()
	out, _, _ := c.CLI("status", "--json")
	var rep struct {
		Mounts []daemon.Status `json:"mounts"`
	}
	json.Unmarshal([]byte(out), &rep)
	for _, s := range rep.Mounts {
		if s.Source == source {
			return s.Space
		}
	}
	return nil
}

// A backing filesystem that really fills up (a 32 MiB tmpfs, no quota): a
// writer that hits ENOSPC waits for the monitor's cycle and succeeds, and
// a recall that hits ENOSPC has the monitor free space (releasing an old
// premigrated file) and delivers the right bytes.
func TestSpaceMonitorOnAFullFilesystem(t *testing.T) {
	testenv.RequireRoot(t)
	const mib = 1 << 20
	d := testenv.NewDaemon(t, "", nil, "--high", "90", "--low", "40", "--interval", "1h", "--min-age", "1h")
	if err := syscall.Mount("tmpfs", d.Backing, "tmpfs", 0, "size=32m"); err != nil {
		testenv.Missing(t, "cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(d.Backing, syscall.MNT_DETACH) })
	d.Start()

	want := map[string][32]byte{}
	want["a"] = writeRandom(t, d.M("a"), 15*mib)
	want["b"] = writeRandom(t, d.M("b"), 15*mib)
	old := func(rel string) {
		when := time.Now().Add(-48 * time.Hour)
		if err := os.Chtimes(d.M(rel), when, when); err != nil {
			t.Fatal(err)
		}
	}
	old("a")
	old("b")
	// 30 of 32 MiB used: this 10 MiB writer hits ENOSPC, and goes on.
	want["c"] = writeRandom(t, d.M("c"), 10*mib)
	for _, rel := range []string{"a", "b"} {
		if s := state(t, d, rel).State; s != "migrated" {
			t.Fatalf("%s is %s after the out-of-space cycle", rel, s)
		}
	}
	if !strings.Contains(d.Log(), "out of space: a write needs") {
		t.Fatal("the writer did not raise an out-of-space event")
	}

	// a comes back (25 of 32 MiB), is made old again; then b needs 15 MiB
	// more than there is: its recall asks the monitor, which releases a.
	if sumFile(t, d.M("a")) != want["a"] {
		t.Fatal("a reads back wrong")
	}
	old("a")
	if sumFile(t, d.M("b")) != want["b"] {
		t.Fatal("b reads back wrong after its recall hit ENOSPC")
	}
	if s := state(t, d, "a").State; s != "migrated" {
		t.Fatalf("a is %s: the recall of b should have had it released", s)
	}
	if sumFile(t, d.M("c")) != want["c"] {
		t.Fatal("c reads back wrong")
	}
}
