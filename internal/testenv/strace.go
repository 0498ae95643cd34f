package testenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Syscall is one system call seen by strace: its name, the paths it acted
// on (from strace -y, or its path arguments), its arguments as printed,
// and whether it succeeded. Start and End order the calls: a call that
// another thread's call interrupted in the trace starts at one line and
// ends at a later one.
type Syscall struct {
	Name       string
	Paths      []string
	Args       string
	OK         bool
	Start, End int
}

// Trace records the system calls of a running process and all its threads.
type Trace struct {
	cmd *exec.Cmd
	out string
}

// StartTrace attaches strace to pid, recording the calls named, and
// returns once every thread is traced.
func StartTrace(t testing.TB, pid int, calls ...string) *Trace {
	t.Helper()
	if _, err := exec.LookPath("strace"); err != nil {
		Missing(t, "strace is not installed (apt-get install strace)")
	}
	out := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command("strace", "-f", "-qq", "-y", "-s", "48", "-o", out,
		"-e", "trace="+strings.Join(calls, ","), "-p", strconv.Itoa(pid))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tr := &Trace{cmd: cmd, out: out}
	t.Cleanup(func() { tr.stop() })
	deadline := time.Now().Add(10 * time.Second)
	for !allTraced(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("strace did not attach to %d", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return tr
}

func allTraced(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, s := range tasks {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "TracerPid:\t0\n") {
			return false
		}
	}
	return len(tasks) > 0
}

func (tr *Trace) stop() {
	if tr.cmd.Process == nil || tr.cmd.ProcessState != nil {
		return
	}
	tr.cmd.Process.Signal(syscall.SIGINT)
	tr.cmd.Wait()
}

// Stop detaches strace and returns the calls recorded, in order.
func (tr *Trace) Stop(t testing.TB) []Syscall {
	t.Helper()
	tr.stop()
	f, err := os.Open(tr.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls, err := ParseTrace(bufio.NewScanner(f))
	if err != nil {
		t.Fatal(err)
	}
	return calls
}

var (
	traceStart   = regexp.MustCompile(`^(\d+)\s+([a-z0-9_]+)\((.*)$`)
	traceResumed = regexp.MustCompile(`^(\d+)\s+<\.\.\. ([a-z0-9_]+) resumed>(.*)$`)
	fdPath       = regexp.MustCompile(`^-?\w*<([^>]*)>`)
	quoted       = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)
	result       = regexp.MustCompile(`\)\s+= (-?\d+)`)
)

// ParseTrace reads strace -f -y output.
func ParseTrace(sc *bufio.Scanner) ([]Syscall, error) {
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var calls []Syscall
	pending := map[string]int{} // pid -> index of its unfinished call
	for line := 0; sc.Scan(); line++ {
		text := sc.Text()
		if m := traceResumed.FindStringSubmatch(text); m != nil {
			i, ok := pending[m[1]]
			if !ok {
				continue // began before strace attached
			}
			delete(pending, m[1])
			calls[i].Args += m[3]
			calls[i].End = line
			calls[i].OK = succeeded(m[3])
			continue
		}
		m := traceStart.FindStringSubmatch(text)
		if m == nil {
			continue // signals, exits
		}
		c := Syscall{Name: m[2], Args: m[3], Start: line, End: line}
		c.Paths = pathsOf(m[2], m[3])
		if strings.HasSuffix(text, "<unfinished ...>") {
			pending[m[1]] = len(calls)
		} else {
			c.OK = succeeded(m[3])
		}
		calls = append(calls, c)
	}
	return calls, sc.Err()
}

func succeeded(tail string) bool {
	m := result.FindStringSubmatch(tail)
	return m != nil && !strings.HasPrefix(m[1], "-")
}

// pathsOf finds the paths a call acts on: each fd argument shown with its
// path, the (directory fd, name) pairs of the *at calls joined, and the
// string arguments of the calls that take paths (unlink, rename, mkdir).
func pathsOf(name, args string) []string {
	atCall := strings.HasSuffix(name, "at") || strings.HasSuffix(name, "at2")
	pathCall := name == "unlink" || name == "rename" || name == "mkdir" || name == "rmdir"
	var paths []string
	list := splitArgs(args)
	for i := 0; i < len(list); i++ {
		a := strings.TrimSpace(list[i])
		if m := fdPath.FindStringSubmatch(a); m != nil {
			if atCall && i+1 < len(list) {
				if n := quoted.FindStringSubmatch(strings.TrimSpace(list[i+1])); n != nil {
					p := n[1]
					if !filepath.IsAbs(p) {
						p = filepath.Join(m[1], p)
					}
					paths = append(paths, p)
					i++
					continue
				}
			}
			paths = append(paths, m[1])
			continue
		}
		if m := quoted.FindStringSubmatch(a); m != nil && pathCall && strings.HasPrefix(a, `"`) {
			paths = append(paths, m[1])
		}
	}
	return paths
}

// splitArgs splits at top-level commas (outside quotes, brackets, braces).
func splitArgs(s string) []string {
	var out []string
	depth, start := 0, 0
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case inQuote:
		case c == '(' || c == '[' || c == '{':
			depth++
		case c == ')' || c == ']' || c == '}':
			if depth == 0 { // the call's closing parenthesis
				return append(out, s[start:i])
			}
			depth--
		case c == ',' && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
