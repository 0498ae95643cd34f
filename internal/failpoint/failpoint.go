// Package failpoint holds named points in the daemon where a test makes
// a crash or race window happen on purpose: pause the goroutine, fail the
// call, stop the whole process, or kill it, at the Nth time the point is
// reached. Points are off and cost one load of a bool unless the
// environment enables them:
//
//	CASCADEFS_FAILPOINTS="migrate-before-punch=kill,recall-after-write=pause@3"
//
// Actions: pause (this goroutine waits until the test removes the file
// DIR/NAME.paused, DIR from CASCADEFS_FAILPOINT_DIR), error (the call
// fails with ErrInjected), stop (SIGSTOP to the whole process, as a long
// GC pause or a frozen VM would; the test sends SIGCONT), kill (SIGKILL).
// "@N" acts on the Nth hit only (default: every hit); "@N+" on the Nth
// and every later one. A "once-" prefix (once-kill@1) makes the action
// happen in one process only, the first to create DIR/NAME.fired: armed
// on every node, the point fires on whichever gets there first and the
// others run on, so a race won by any node is still hit.
package failpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The points, where they are and what a crash there must not lose.
const (
	MigrateAfterUpload     = "migrate-after-upload"     // object and checksums uploaded, premigrated record not written
	MigrateAfterPremigrate = "migrate-after-premigrate" // premigrated record written, release not begun
	MigrateReleaseHeld     = "migrate-release-held"     // new opens held for a release, record unchanged
	MigrateAfterConfirm    = "migrate-after-confirm"    // right, shield and holds confirmed, record still premigrated
	MigrateBeforePunch     = "migrate-before-punch"     // migrated record durable, nothing punched
	MigrateInsidePunch     = "migrate-inside-punch"     // first half of the data punched
	RecallBeforeWrite      = "recall-before-write"      // right held and checked, verified bytes not yet written
	RecallAfterWrite       = "recall-after-write"       // verified bytes written, not synced, record unchanged
	RecallBeforeRecord     = "recall-before-record"     // whole file recalled and synced, record still migrated
	DestroyBeforeUnlink    = "destroy-before-unlink"    // DESTROY entry prepared, the stub's name not yet removed
	DestroyBeforeDelete    = "destroy-before-delete"    // entry ready, object not yet deleted
	TakeoverBeforeCommit   = "takeover-before-commit"   // about to claim a failed owner's filesystem, nothing written
	HandoverAfterStop      = "handover-after-stop"      // old owner's session stopped, ownership not yet moved
	LeaseRenew             = "lease-renew"              // a node is about to renew its lease (error: the repository did not answer)
	RepoInUpdate           = "repo-in-update"           // inside a bbolt write transaction, the file lock held
)

// All lists every point, for the crash suite's random picks.
var All = []string{MigrateAfterUpload, MigrateAfterPremigrate, MigrateReleaseHeld, MigrateAfterConfirm, MigrateBeforePunch, MigrateInsidePunch,
	RecallBeforeWrite, RecallAfterWrite, RecallBeforeRecord, DestroyBeforeUnlink, DestroyBeforeDelete,
	TakeoverBeforeCommit, HandoverAfterStop, LeaseRenew, RepoInUpdate}

// ErrInjected is what a point set to "error" fails with.
var ErrInjected = errors.New("failpoint: injected failure")

type point struct {
	action string
	nth    int  // 0: every hit
	after  bool // nth and every later hit
	once   bool // only in the process that claims the DIR/NAME.fired marker
	hits   int
}

var (
	enabled bool
	mu      sync.Mutex
	points  map[string]*point
	dir     string
)

func init() {
	if err := Setup(os.Getenv("CASCADEFS_FAILPOINTS"), os.Getenv("CASCADEFS_FAILPOINT_DIR")); err != nil {
		fmt.Fprintln(os.Stderr, "cascadefs:", err)
		os.Exit(2)
	}
}

// Setup parses a failpoint list (as in CASCADEFS_FAILPOINTS); an empty
// list turns every point off.
func Setup(spec, pauseDir string) error {
	ps := map[string]*point{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, action, ok := strings.Cut(item, "=")
		if !ok || !known(name) {
			return fmt.Errorf("CASCADEFS_FAILPOINTS: unknown failpoint %q (known: %s)", name, strings.Join(All, ", "))
		}
		p := &point{action: action}
		if rest, ok := strings.CutPrefix(p.action, "once-"); ok {
			if pauseDir == "" {
				return fmt.Errorf("CASCADEFS_FAILPOINTS: %q: once- needs CASCADEFS_FAILPOINT_DIR", item)
			}
			p.once, p.action, action = true, rest, rest
		}
		if a, n, ok := strings.Cut(action, "@"); ok {
			p.action = a
			p.after = strings.HasSuffix(n, "+")
			v, err := strconv.Atoi(strings.TrimSuffix(n, "+"))
			if err != nil || v < 1 {
				return fmt.Errorf("CASCADEFS_FAILPOINTS: %q: want @N with N ≥ 1", item)
			}
			p.nth = v
		}
		switch p.action {
		case "pause":
			if pauseDir == "" {
				return fmt.Errorf("CASCADEFS_FAILPOINTS: %q: pause needs CASCADEFS_FAILPOINT_DIR", item)
			}
		case "error", "stop", "kill":
		default:
			return fmt.Errorf("CASCADEFS_FAILPOINTS: %q: want pause, error, stop or kill", item)
		}
		ps[name] = p
	}
	mu.Lock()
	points, dir, enabled = ps, pauseDir, len(ps) > 0
	mu.Unlock()
	return nil
}

func known(name string) bool {
	for _, n := range All {
		if n == name {
			return true
		}
	}
	return false
}

// Hit is called at the point name. It returns ErrInjected when the point
// is set to fail this time, and nil otherwise (always, when points are off).
func Hit(name string) error {
	if !enabled {
		return nil
	}
	mu.Lock()
	p := points[name]
	act := ""
	if p != nil {
		p.hits++
		if p.nth == 0 || p.hits == p.nth || (p.after && p.hits > p.nth) {
			act = p.action
		}
	}
	pauseDir := dir
	once := p != nil && p.once
	mu.Unlock()
	if act != "" && once && !claim(filepath.Join(pauseDir, name+".fired")) {
		return nil // another process fired it
	}
	switch act {
	case "error":
		return fmt.Errorf("%s: %w", name, ErrInjected)
	case "kill":
		signalSelf(syscall.SIGKILL)
		select {} // never runs on
	case "stop":
		signalSelf(syscall.SIGSTOP)
	case "pause":
		pause(filepath.Join(pauseDir, name+".paused"))
	}
	return nil
}

// signalSelf sends sig to this process through the calling thread, which
// takes it on its way out of the call: with kill(2) another thread may
// take it and this one run on for a moment (a recall write slipped past a
// stop point that way).
func signalSelf(sig syscall.Signal) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	syscall.Tgkill(os.Getpid(), syscall.Gettid(), sig)
}

// claim creates the marker; false when it exists already.
func claim(marker string) bool {
	f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return false
	}
	fmt.Fprint(f, os.Getpid())
	f.Close()
	return true
}

// pause makes the marker file and waits until the test removes it.
func pause(marker string) {
	if err := os.WriteFile(marker, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "cascadefs: failpoint pause:", err)
		return
	}
	for {
		if _, err := os.Stat(marker); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
