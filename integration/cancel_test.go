package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// status lists pending recalls (file, range, waiters, age, priority), and
// `recall --cancel` ends them: waiting readers get ECANCELED at once, the
// stream writes nothing more, what it wrote stays valid, and a later read
// recalls the rest. One worker: the first recall holds it, the others
// queue. Its writes pause from the second on: its reader is served from
// the streams' memory (one GET may split in several) as far as that goes,
// then waits.
func TestCancelPendingRecalls(t *testing.T) {
	dir := t.TempDir()
	d := testenv.NewDaemon(t, "", []string{"CASCADEFS_FAILPOINTS=" + failpoint.RecallBeforeWrite + "=pause@2+", "CASCADEFS_FAILPOINT_DIR=" + dir}, "--workers", "1")
	d.Start()
	marker := filepath.Join(dir, failpoint.RecallBeforeWrite+".paused")
	const size = 64 << 20 // more than all its streams' buffers show (8 streams of 4 MiB at most)
	data := map[string][]byte{}
	for _, name := range []string{"f", "g", "h"} {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(i>>8) ^ name[0]
		}
		data[name] = b
		if err := os.WriteFile(d.M(name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.MustCLI("migrate", d.M("f"), d.M("g"), d.M("h"))
	testenv.DropCaches()

	read := func(name string) <-chan error {
		done := make(chan error, 1)
		go func() { _, err := os.ReadFile(d.M(name)); done <- err }()
		return done
	}
	fRead := read("f")
	waitForFile(t, marker)
	pending := func() []dmapi.PendingEvent {
		var st struct {
			Mounts []struct {
				PendingEvents []dmapi.PendingEvent `json:"pending_events"`
			} `json:"mounts"`
		}
		if err := json.Unmarshal([]byte(d.MustCLI("status", "--json")), &st); err != nil || len(st.Mounts) != 1 {
			t.Fatalf("status: %v", err)
		}
		return st.Mounts[0].PendingEvents
	}
	// Per file: a reader's read may be several events (the kernel's
	// readahead comes in requests of its own, each served on its own).
	byFile := func() map[string][]dmapi.PendingEvent {
		m := map[string][]dmapi.PendingEvent{}
		for _, p := range pending() {
			m[p.Event.Path] = append(m[p.Event.Path], p)
		}
		return m
	}
	// f's reader is served from memory until the paused writer holds
	// every buffer of its stream: only then does its event hold the
	// worker for good.
	testenv.WaitFor(t, "f's reader to wait on the paused stream", 20*time.Second, func() bool {
		for _, p := range byFile()["f"] {
			if p.Running && p.Age > 300*time.Millisecond {
				return true
			}
		}
		return false
	})
	gRead := read("g")
	hRecall := cliAsync(d, "recall", d.M("h"))
	testenv.WaitFor(t, "pending events of three files", 20*time.Second, func() bool { return len(byFile()) == 3 })
	for path, evs := range byFile() {
		want := map[string]struct {
			running bool
			prio    dmapi.Priority
		}{"f": {true, dmapi.PriorityReader}, "g": {false, dmapi.PriorityReader}, "h": {false, dmapi.PriorityAdmin}}[path]
		running := false
		for _, p := range evs {
			running = running || p.Running
			if p.Priority != want.prio || p.Waiters != 1 || p.Age <= 0 {
				t.Errorf("pending %s: %+v", path, p)
			}
		}
		if running != want.running {
			t.Errorf("pending %s: running %v, want %v: %+v", path, running, want.running, evs)
		}
	}
	out := d.MustCLI("status")
	if !strings.Contains(out, "READ f [") || !strings.Contains(out, "admin priority") {
		t.Errorf("status does not list the pending recalls:\n%s", out)
	}

	// One file: only its reader is answered.
	gEvents := len(byFile()["g"])
	out = d.MustCLI("recall", "--cancel", d.M("g"))
	if !strings.Contains(out, fmt.Sprintf("%d pending event(s) cancelled", gEvents)) {
		t.Errorf("cancel g (%d events): %s", gEvents, out)
	}
	if err := waitErr(t, gRead); !errors.Is(err, syscall.ECANCELED) {
		t.Errorf("reader of g got %v, want ECANCELED", err)
	}
	if left := byFile(); len(left) != 2 || left["g"] != nil {
		t.Errorf("pending after cancelling g: %+v", left)
	}

	// All: the running recall too; its reader is answered while the
	// stream is still paused.
	out = d.MustCLI("recall", "--cancel", "--all")
	if !strings.Contains(out, "pending event(s) cancelled") || len(pending()) != 0 {
		t.Errorf("cancel --all: %s", out)
	}
	if err := waitErr(t, fRead); !errors.Is(err, syscall.ECANCELED) {
		t.Errorf("reader of f got %v, want ECANCELED", err)
	}
	if r := <-hRecall; r.err == nil || !strings.Contains(r.out, "cancelled") {
		t.Errorf("admin recall of h: %v\n%s", r.err, r.out)
	}
	// From here on every write goes through: the marker each one leaves
	// is taken away at once.
	passAll := make(chan struct{})
	defer close(passAll)
	go func() {
		for {
			select {
			case <-passAll:
				return
			case <-time.After(2 * time.Millisecond):
				os.Remove(marker)
			}
		}
	}()
	testenv.WaitFor(t, "the cancelled stream to end", 20*time.Second, func() bool { return strings.Contains(d.Log(), "recall stream cancelled") })
	kept := state(t, d, "f").ResidentBytes
	time.Sleep(500 * time.Millisecond)
	if s := state(t, d, "f"); s.State != "migrated" || s.ResidentBytes != kept || kept < 256<<10 || kept >= size {
		t.Errorf("f after the cancel: %+v (was %d resident), want migrated with what was written before, no more", s, kept)
	}
	// What was recalled stays valid; the rest comes on the next read.
	for _, name := range []string{"f", "g", "h"} {
		got, err := os.ReadFile(d.M(name))
		if err != nil || !bytes.Equal(got, data[name]) {
			t.Errorf("%s reads back wrong after the cancel: %v", name, err)
		}
	}

	for _, args := range [][]string{{"recall", "--cancel"}, {"recall", "--all", d.M("f")}} {
		if _, stderr, err := d.CLI(args...); err == nil || stderr == "" {
			t.Errorf("%v: want a refusal, got err %v stderr %q", args, err, stderr)
		}
	}
}

// waitErr waits a few seconds for a reader's answer.
func waitErr(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting reader was not answered within 5 s")
		return nil
	}
}

// In a cluster the cancel is carried out on the owner, from any node, and
// a reader on another node gets ECANCELED through the node RPC.
func TestCancelPendingRecallsAcrossNodes(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	dir := t.TempDir()
	c.Nodes["n1"].Env = []string{"CASCADEFS_FAILPOINTS=" + failpoint.RecallBeforeWrite + "=pause@3", "CASCADEFS_FAILPOINT_DIR=" + dir}
	c.Start("n1", "n2")
	marker := filepath.Join(dir, failpoint.RecallBeforeWrite+".paused")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("f"), 8<<20)
	c.MustCLI("migrate", n1.M("f"))
	testenv.DropCaches()
	done := make(chan error, 1)
	go func() { _, err := os.ReadFile(n2.M("f")); done <- err }()
	waitForFile(t, marker)
	out := c.MustCLI("recall", "--cancel", n2.M("f"))
	if !strings.Contains(out, "1 pending event(s) cancelled") {
		t.Errorf("cancel through n2: %s", out)
	}
	if err := waitErr(t, done); !errors.Is(err, syscall.ECANCELED) {
		t.Errorf("reader on n2 got %v, want ECANCELED", err)
	}
	os.Remove(marker)
	time.Sleep(cancelEchoWait)
	if sumFile(t, n2.M("f")) != want {
		t.Error("f reads back wrong on n2 after the cancel")
	}
}

// cancelEchoWait outlasts the time a handle's reads fail after a cancel.
const cancelEchoWait = 2100 * time.Millisecond

// An event names its file by handle; a file whose dentry the kernel
// dropped while the event was queued opens by handle without a path (it
// reads as "/"). The recall must still find it (by its path, checked to
// be the same inode), not fail as "outside the filesystem".
func TestRecallByHandleAfterCachesDropped(t *testing.T) {
	dir := t.TempDir()
	d := testenv.NewDaemon(t, "", []string{"CASCADEFS_FAILPOINTS=" + failpoint.RecallBeforeWrite + "=pause@1", "CASCADEFS_FAILPOINT_DIR=" + dir}, "--workers", "1")
	d.Start()
	marker := filepath.Join(dir, failpoint.RecallBeforeWrite+".paused")
	wantA := writeRandom(t, d.M("a"), 4<<20)
	wantB := writeRandom(t, d.M("b"), 4<<20)
	d.MustCLI("migrate", d.M("a"), d.M("b"))
	testenv.DropCaches()
	// An admin's recall of a holds the only worker: it waits for the
	// paused write (a reader would be served from memory, and go).
	recallA := cliAsync(d, "recall", d.M("a"))
	waitForFile(t, marker)
	recallB := cliAsync(d, "recall", d.M("b"))
	testenv.WaitFor(t, "b's event queued", 20*time.Second, func() bool { return strings.Contains(d.MustCLI("status"), "READ b [") })
	testenv.DropCaches() // b's dentry goes while its event waits
	os.Remove(marker)
	if r := <-recallB; r.err != nil {
		t.Fatalf("recall of b after the caches were dropped: %v\n%s", r.err, r.out)
	}
	if r := <-recallA; r.err != nil {
		t.Fatalf("recall of a: %v\n%s", r.err, r.out)
	}
	if sumFile(t, d.M("a")) != wantA || sumFile(t, d.M("b")) != wantB {
		t.Fatal("wrong bytes")
	}
}
