package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds the cascadefs command once per test process into the
// git-ignored bin/ folder (one file, replaced atomically, so test processes
// running side by side never see a half-written binary and nothing leaks).
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir := filepath.Join(RepoRoot(), "bin")
		if buildErr = os.MkdirAll(dir, 0o755); buildErr != nil {
			return
		}
		tmp, err := os.CreateTemp(dir, ".cascadefs-test-")
		if err != nil {
			buildErr = err
			return
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		// A test build: failpoints compiled in (internal/failpoint), and
		// coverage when make test measures it (CoverDir).
		args := []string{"build", "-tags", "failpoints", "-o", tmp.Name()}
		if CoverDir() != "" {
			args = append(args, "-cover", "-coverpkg=github.com/cascadefs/cascadefs/...")
		}
		out, err := exec.Command("go", append(args, filepath.Join(RepoRoot(), "cmd", "cascadefs"))...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
			return
		}
		binPath = filepath.Join(dir, "cascadefs-test")
		buildErr = os.Rename(tmp.Name(), binPath)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// CoverDir is where the daemons and commands the tests start write their
// coverage ($CASCADEFS_COVERDIR; make test merges it with the unit
// tests' and reports it by package), or "" when it is not measured.
func CoverDir() string { return os.Getenv("CASCADEFS_COVERDIR") }

// processEnv is the environment of a cascadefs process a test starts.
func processEnv(env []string) []string {
	out := append(os.Environ(), env...)
	if d := CoverDir(); d != "" {
		out = append(out, "GOCOVERDIR="+d)
	}
	return out
}

// ProductionBinary builds the cascadefs command as `make build` does (no
// failpoints) into a temporary directory of t.
func ProductionBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cascadefs")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(RepoRoot(), "cmd", "cascadefs")).CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// RequireRoot skips tests that mount FUSE with allow_other.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root (FUSE mounts with allow_other, drop_caches)")
	}
}

// Missing reports a prerequisite this machine lacks. Under `make test` and
// CI (CASCADEFS_REQUIRE_ALL=1) the test fails: a test that cannot run must
// not pass as skipped. By hand (go test) it is skipped.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CASCADEFS_REQUIRE_ALL") == "1" || os.Getenv("CASCADEFS_REQUIRE_MINIO") == "1" {
		t.Fatalf("missing prerequisite: "+format, args...)
	}
	t.Skipf(format, args...)
}

// Daemon is a `cascadefs mount` process under test.
type Daemon struct {
	t          testing.TB
	Dir        string
	Backing    string
	Mountpoint string
	Archive    string
	RunDir     string
	Env        []string
	Args       []string
	proc
}

// NewDaemon prepares directories for a daemon serving filesystem "t1".
func NewDaemon(t testing.TB, archiveURL string, env []string, extra ...string) *Daemon {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	d := &Daemon{t: t, Dir: dir, Backing: filepath.Join(dir, "private", "backing"), Mountpoint: filepath.Join(dir, "mnt"),
		RunDir: filepath.Join(dir, "run"), Archive: archiveURL, Env: env, Args: extra}
	if archiveURL == "" {
		d.Archive = "file://" + filepath.Join(dir, "archive")
	}
	for _, p := range []string{d.Backing, d.Mountpoint, d.RunDir} {
		os.MkdirAll(p, 0o755)
	}
	// Users must only use the mount: the backing directory lies in a
	// root-only directory, whatever a test opens up above the mountpoint.
	os.Chmod(filepath.Dir(d.Backing), 0o700)
	addRunDir(d.RunDir)
	t.Cleanup(func() { removeRunDir(d.RunDir); d.cleanup() })
	return d
}

// Start runs the daemon and waits for its control socket.
func (d *Daemon) Start() {
	d.t.Helper()
	args := []string{"mount", "--backing", d.Backing, "--archive", d.Archive, "--name", "t1",
		"--state-dir", filepath.Join(d.Dir, "state")}
	if !slices.ContainsFunc(d.Args, func(a string) bool { return strings.HasPrefix(a, "--retention") }) {
		// Deleted files' objects go at once, as the tests of deletion
		// expect; the tests of retention set it.
		args = append(args, "--retention", "0")
	}
	args = append(args, d.Args...)
	args = append(args, d.Mountpoint)
	sock := filepath.Join(d.RunDir, "t1.sock")
	os.Remove(sock) // left by a killed daemon
	d.start(d.t, args, append(d.Env, "CASCADEFS_RUN_DIR="+d.RunDir), filepath.Join(d.Dir, "daemon.log"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st syscall.Stat_t
		if _, err := os.Stat(sock); err == nil && d.mounted() && syscall.Stat(d.Mountpoint, &st) == nil {
			return
		}
		select {
		case <-d.done:
			d.t.Fatalf("daemon exited at start:\n%s", d.Log())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon not ready after 30s:\n%s", d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *Daemon) mounted() bool { return mountedAt(d.Mountpoint) }

func unmountDetach(p string) { syscall.Unmount(p, syscall.MNT_DETACH) }

// Log returns the daemon's log so far.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "daemon.log"))
	return string(b)
}

// Stop sends SIGTERM and waits for a clean exit.
func (d *Daemon) Stop() {
	d.t.Helper()
	if d.cmd != nil && !d.terminate(30*time.Second) {
		d.t.Errorf("daemon ignored SIGTERM for 30s")
	}
}

func (d *Daemon) cleanup() {
	if d.cmd != nil {
		d.terminate(15 * time.Second)
	}
	for i := 0; i < 10 && d.mounted(); i++ { // dead mounts of killed daemons may be stacked
		syscall.Unmount(d.Mountpoint, syscall.MNT_DETACH)
	}
	if d.t.Failed() {
		d.t.Logf("daemon log:\n%s", d.Log())
	}
}

// CLI runs an admin command against this daemon.
func (d *Daemon) CLI(args ...string) (stdout, stderr string, err error) {
	return runCLI(d.t, []string{"CASCADEFS_RUN_DIR=" + d.RunDir}, args)
}

// MustCLI runs an admin command that must succeed.
func (d *Daemon) MustCLI(args ...string) string {
	d.t.Helper()
	return mustCLI(d.t, []string{"CASCADEFS_RUN_DIR=" + d.RunDir}, args)
}

func runCLI(t testing.TB, env, args []string) (stdout, stderr string, err error) {
	cmd := exec.Command(Binary(t), args...)
	cmd.Env = processEnv(env)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func mustCLI(t testing.TB, env, args []string) string {
	t.Helper()
	o, e, err := runCLI(t, env, args)
	if err != nil {
		t.Fatalf("cascadefs %v: %v\nstdout: %s\nstderr: %s", args, err, o, e)
	}
	return o
}

// ArchiveCLI runs a command that reaches the archive itself (rebuild),
// with the archive's credentials.
func (d *Daemon) ArchiveCLI(args ...string) (stdout, stderr string, err error) {
	return runCLI(d.t, append([]string{"CASCADEFS_RUN_DIR=" + d.RunDir}, d.Env...), args)
}

// M is a path inside the mount.
func (d *Daemon) M(rel string) string { return filepath.Join(d.Mountpoint, rel) }

// B is a path inside the backing directory.
func (d *Daemon) B(rel string) string { return filepath.Join(d.Backing, rel) }

// DropCaches makes the next reads and lookups through the mounts of this
// test process's daemons and nodes go to their daemons, not the kernel's
// caches: each daemon drops its own mount's (a test build's control
// request). Nothing else on the machine is touched. A daemon that does
// not answer within a second (stopped) is left as it is.
func DropCaches() {
	var wg sync.WaitGroup
	for _, sock := range liveSockets() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "unix", sock)
				}}}
			if resp, err := c.Post("http://cascadefs/drop-caches", "", nil); err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
}

// DropHostCaches drops the whole host's page cache, dentries and inodes,
// for benchmarks whose cold reads must come from the disk and the object
// store (never in a pass/fail test: it changes the machine's state).
func DropHostCaches() { os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) }

// runDirs are the run directories of this process's live daemons and
// clusters (added when made, removed at their cleanup).
var runDirs struct {
	sync.Mutex
	m map[string]bool
}

func addRunDir(dir string) {
	runDirs.Lock()
	defer runDirs.Unlock()
	if runDirs.m == nil {
		runDirs.m = map[string]bool{}
	}
	runDirs.m[dir] = true
}

func removeRunDir(dir string) {
	runDirs.Lock()
	defer runDirs.Unlock()
	delete(runDirs.m, dir)
}

// liveSockets are the mounts' control sockets in those run directories.
func liveSockets() []string {
	runDirs.Lock()
	defer runDirs.Unlock()
	var out []string
	for dir := range runDirs.m {
		socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
		for _, s := range socks {
			if !strings.HasPrefix(filepath.Base(s), "node@") {
				out = append(out, s)
			}
		}
	}
	return out
}

// ArchiveObjects lists every object (and, for a directory archive, every
// leftover temporary file) in the daemon's archive.
func (d *Daemon) ArchiveObjects(t testing.TB) []string { return ArchiveObjects(t, d.Archive, d.Env) }

// ArchiveObjects lists every object of an archive, with the credentials in env.
func ArchiveObjects(t testing.TB, archiveURL string, envList []string) []string {
	t.Helper()
	u, err := url.Parse(archiveURL)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	switch u.Scheme {
	case "file":
		filepath.WalkDir(u.Path, func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				rel, _ := filepath.Rel(u.Path, p)
				keys = append(keys, rel)
			}
			return nil
		})
	case "s3":
		c := s3Client(t, u, envList)
		ctx := context.Background()
		for o := range c.ListObjects(ctx, u.Host, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			keys = append(keys, o.Key)
		}
		for up := range c.ListIncompleteUploads(ctx, u.Host, "", true) {
			if up.Err == nil {
				keys = append(keys, "incomplete upload of "+up.Key)
			}
		}
	}
	return fileObjects(keys)
}

// The archive layout's names that fileObjects needs (testenv cannot
// import package archive, whose tests import testenv; archive's
// TestLayoutNamesInTestenv holds them equal).
const (
	JournalPrefix = ".cascadefs-journal/"
	ScrubPrefix   = ".cascadefs-scrub/"
	MetaSuffix    = ".meta"
)

// fileObjects leaves out of keys what is not one file's: the namespace
// journal, and the description of a data object that is there (a
// description without its object is a leak, and stays in).
func fileObjects(keys []string) []string {
	have := map[string]bool{}
	for _, k := range keys {
		have[k] = true
	}
	out := []string{}
	for _, k := range keys {
		if strings.HasPrefix(k, JournalPrefix) || strings.HasPrefix(k, ScrubPrefix) {
			continue
		}
		if data, ok := strings.CutSuffix(k, MetaSuffix); ok && have[data] {
			continue
		}
		out = append(out, k)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil
	}
	return out
}

func s3Client(t testing.TB, u *url.URL, envList []string) *minio.Client {
	env := map[string]string{}
	for _, kv := range envList {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	c, err := minio.New(u.Query().Get("endpoint"), &minio.Options{Creds: credentials.NewStaticV4(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], "")})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// DeleteObject deletes an object of an S3 archive behind the daemon's back.
func DeleteObject(t testing.TB, archiveURL string, envList []string, key string) {
	t.Helper()
	u, err := url.Parse(archiveURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := s3Client(t, u, envList).RemoveObject(context.Background(), u.Host, key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// proc is a cascadefs process under test.
type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	wrap []string // a prefix, such as nsenter into a network namespace
}

// start runs the cascadefs binary with args, its output appended to logPath.
func (p *proc) start(t testing.TB, args, env []string, logPath string) {
	t.Helper()
	argv := append(append(append([]string(nil), p.wrap...), Binary(t)), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = processEnv(env)
	var err error
	if p.log, err = os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(p.cmd, p.done)
}

// running reports whether the process was started and has not ended.
func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// terminate sends SIGTERM, kills after timeout, and reports a clean exit.
func (p *proc) terminate(timeout time.Duration) bool {
	clean := true
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		clean = false
	}
	p.cmd = nil
	p.log.Close()
	return clean
}

// Exited waits up to timeout for the process to end by itself.
func (p *proc) Exited(timeout time.Duration) bool {
	select {
	case <-p.done:
		p.cmd = nil
		p.log.Close()
		return true
	case <-time.After(timeout):
		return false
	}
}

// Pause stops the process (SIGSTOP): to the others it looks dead or cut off.
func (p *proc) Pause() {
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume lets a paused process go on (SIGCONT).
func (p *proc) Resume() {
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Kill9 kills the process with SIGKILL, leaving its dead mounts behind.
func (p *proc) Kill9() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
	p.cmd = nil
	p.log.Close()
}

// PID is the process id of the running process.
func (p *proc) PID() int { return p.cmd.Process.Pid }

// Running reports whether the process runs (false once it died or was stopped).
func (p *proc) Running() bool { return p.running() }

// Signal sends sig to the process.
func (p *proc) Signal(sig os.Signal) { p.cmd.Process.Signal(sig) }

// ArchiveBytes is the size of all objects in the archive of archiveURL.
func ArchiveBytes(t testing.TB, archiveURL string, envList []string) int64 {
	t.Helper()
	u, err := url.Parse(archiveURL)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	switch u.Scheme {
	case "file":
		filepath.WalkDir(u.Path, func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if info, err := e.Info(); err == nil {
					total += info.Size()
				}
			}
			return nil
		})
	case "s3":
		c := s3Client(t, u, envList)
		for o := range c.ListObjects(context.Background(), u.Host, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			total += o.Size
		}
	default:
		t.Fatalf("archive %s: unknown scheme", archiveURL)
	}
	return total
}
