//go:build failpoints

package failpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Enabled: this build has failpoints.
const Enabled = true

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

// known reports whether name is a failpoint.
func known(name string) bool {
	return slices.Contains(All, name)
}
