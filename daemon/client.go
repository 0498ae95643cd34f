package daemon

import (
	"bufio"
	"bytes"
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
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/scrub"
	"golang.org/x/sys/unix"
)

// MountInfo is a cascadefs mount found in the mount table: Name is its
// source (the name of its control socket), Dev its device number.
type MountInfo struct {
	Name       string
	Mountpoint string
	Dev        uint64
}

// FindMount returns the cascadefs mount that holds path, and path relative
// to its root. It follows no symlink in the last element.
func FindMount(path string) (MountInfo, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return MountInfo{}, "", err
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(dir, filepath.Base(abs))
	}
	mounts, err := Mounts()
	if err != nil {
		return MountInfo{}, "", err
	}
	var best MountInfo
	for _, m := range mounts {
		if (abs == m.Mountpoint || strings.HasPrefix(abs, m.Mountpoint+"/")) && len(m.Mountpoint) > len(best.Mountpoint) {
			best = m
		}
	}
	if best.Name == "" {
		return MountInfo{}, "", fmt.Errorf("%s: not inside a cascadefs mount", path)
	}
	rel, _ := filepath.Rel(best.Mountpoint, abs)
	return best, rel, nil
}

// Mounts lists the cascadefs mounts of this machine.
func Mounts() ([]MountInfo, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []MountInfo
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 2 || g[0] != "fuse.cascadefs" {
			continue
		}
		var major, minor uint32
		fmt.Sscanf(f[2], "%d:%d", &major, &minor)
		out = append(out, MountInfo{Name: g[1], Mountpoint: unescapeMount(f[4]), Dev: unix.Mkdev(major, minor)})
	}
	return out, nil
}

// MountsIn lists the cascadefs mounts whose control socket's name is in
// the run directory runDir. Mounts of daemons that use another run
// directory (another instance, a test) are not this admin's; one of them
// may have the same name as one here, which its daemon tells apart
// (ErrOtherMount).
func MountsIn(runDir string) ([]MountInfo, error) {
	all, err := Mounts()
	if err != nil {
		return nil, err
	}
	var out []MountInfo
	for _, m := range all {
		if _, err := os.Lstat(SocketPath(runDir, m.Name)); err == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Client talks to one daemon's control socket.
type Client struct {
	Name string
	dev  uint64 // of the mount asked about
	http *http.Client
}

// Dial returns a client of the daemon of mount m, by its control socket in
// runDir. Every request names m's device: a daemon that serves another
// mount of the same name refuses it (ErrOtherMount).
func Dial(runDir string, m MountInfo) *Client {
	return &Client{Name: m.Name, dev: m.Dev, http: UnixClient(SocketPath(runDir, m.Name), 0)}
}

// ErrOtherMount: the control socket of that name in this run directory
// belongs to another mount of the same name (a daemon started with
// another CASCADEFS_RUN_DIR serves the one asked about).
var ErrOtherMount = errors.New("served by a daemon of another run directory (CASCADEFS_RUN_DIR)")

// mountDevHeader carries the device number of the mount a request is for.
const mountDevHeader = "Cascadefs-Mount-Dev"

func (c *Client) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://cascadefs"+path, rd)
	if c.dev != 0 {
		req.Header.Set(mountDevHeader, strconv.FormatUint(c.dev, 10))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return nil, fmt.Errorf("filesystem %s: its daemon does not answer (%v)", c.Name, ne.Err)
		}
		return nil, fmt.Errorf("filesystem %s: %w", c.Name, err)
	}
	if resp.StatusCode == http.StatusMisdirectedRequest {
		resp.Body.Close()
		return nil, fmt.Errorf("filesystem %s: %w", c.Name, ErrOtherMount)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, errors.New(strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// Status asks for the filesystem's status.
func (c *Client) Status() (Status, error) {
	var st Status
	c.http.Timeout = StatusBudget + 500*time.Millisecond // whatever the daemon's peers do
	resp, err := c.do("GET", "/status", nil)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// DF walks the filesystem and counts its files by state (no timeout: a
// walk of millions of files takes minutes).
func (c *Client) DF() (DF, error) {
	var df DF
	resp, err := c.do("GET", "/df", nil)
	if err != nil {
		return df, err
	}
	defer resp.Body.Close()
	return df, json.NewDecoder(resp.Body).Decode(&df)
}

// Cancel cancels the pending events on the files under req.Paths (or all).
func (c *Client) Cancel(req Request) ([]dmapi.Event, error) {
	var evs []dmapi.Event
	return evs, c.call("/cancel", req, &evs)
}

// Ls lists the state of the files under paths.
func (c *Client) Ls(req Request) ([]Entry, error) {
	var entries []Entry
	return entries, c.call("/ls", req, &entries)
}

// Kept lists the deleted and replaced versions kept under req.Paths.
func (c *Client) Kept(req Request) ([]migrate.KeptVersion, error) {
	var kept []migrate.KeptVersion
	return kept, c.call("/kept", req, &kept)
}

// Undelete brings a kept version back.
func (c *Client) Undelete(req migrate.UndeleteRequest) (migrate.KeptVersion, error) {
	var v migrate.KeptVersion
	resp, err := c.do("POST", "/undelete", req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// Plan says what the space monitor's policy would pick under paths.
func (c *Client) Plan(req Request) ([]migrate.Verdict, error) {
	var verdicts []migrate.Verdict
	return verdicts, c.call("/plan", req, &verdicts)
}

func (c *Client) call(path string, req Request, reply any) error {
	resp, err := c.do("POST", path, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(reply)
}

// Reconcile runs a reconcile and calls fn for each streamed message.
func (c *Client) Reconcile(opt migrate.ReconcileOptions, fn func(Message)) (*migrate.ReconcileReport, error) {
	m, err := c.streamed("/reconcile", opt, "reconcile", fn)
	return m.Reconcile, err
}

// Scrub runs a scrub and calls fn for each streamed message.
func (c *Client) Scrub(opt scrub.Options, fn func(Message)) (*scrub.Report, error) {
	m, err := c.streamed("/scrub", opt, "scrub", fn)
	return m.Scrub, err
}

// Import makes stubs for the objects under req.URL, on the owner.
func (c *Client) Import(req migrate.ImportRequest, fn func(Message)) (*migrate.ImportReport, error) {
	m, err := c.streamed("/import", req, "import", fn)
	return m.Import, err
}

// streamed posts body to path and calls fn for each streamed message
// until the message of type final (returned) or an error.
func (c *Client) streamed(path string, body any, final string, fn func(Message)) (Message, error) {
	resp, err := c.do("POST", path, body)
	if err != nil {
		return Message{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return Message{}, fmt.Errorf("bad answer from daemon: %w", err)
		}
		switch m.Type {
		case final:
			return m, nil
		case "error":
			return m, errors.New(m.Error)
		}
		fn(m)
	}
	if err := sc.Err(); err != nil {
		return Message{}, err
	}
	return Message{}, fmt.Errorf("filesystem %s: the daemon stopped before finishing", c.Name)
}

// Batch runs a migrate or recall ("migrate" or "recall") and calls fn for
// each streamed message.
func (c *Client) Batch(op string, req Request, fn func(Message)) error {
	resp, err := c.do("POST", "/"+op, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	done := false
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("bad answer from daemon: %w", err)
		}
		done = done || m.Type == "done"
		fn(m)
	}
	if !done {
		return fmt.Errorf("filesystem %s: the daemon stopped before finishing", c.Name)
	}
	return sc.Err()
}
