package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// mountRefused runs `cascadefs mount` with args and wants it to exit at
// once with a one-line error containing want, leaving nothing mounted.
func mountRefused(t *testing.T, env []string, want string, args ...string) {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t), append([]string{"mount"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		syscall.Unmount(args[len(args)-1], syscall.MNT_DETACH) // what it mounted
		t.Fatalf("mount %v was not refused: it ran\n%s", args, out)
	}
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("mount %v: want a refusal saying %q, got %v:\n%s", args, want, err, out)
	}
	mp := args[len(args)-1]
	mounts, _ := daemon.Mounts()
	for _, m := range mounts {
		if m.Mountpoint == mp {
			t.Fatalf("mount %v: refused, but %s is mounted", args, mp)
		}
	}
}

// Unsafe layouts are refused with a sentence, after resolving symlinks
// (issue 20, item 4): a backing directory in or at the mountpoint (the
// daemon would serve its own mount), a directory archive or the state
// directory in the backing tree, a backing directory others can reach.
func TestUnsafeMountsRefused(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	priv := filepath.Join(dir, "private")
	b, mp, arch, state := filepath.Join(priv, "b"), filepath.Join(priv, "mnt"), filepath.Join(priv, "arch"), filepath.Join(priv, "state")
	for _, p := range []string{b, mp, arch, state} {
		os.MkdirAll(p, 0o755)
	}
	os.Chmod(priv, 0o700)
	link := filepath.Join(priv, "link-to-b")
	os.Symlink(b, link)
	env := []string{"CASCADEFS_RUN_DIR=" + filepath.Join(dir, "run")}
	os.MkdirAll(filepath.Join(dir, "run"), 0o755)
	os.MkdirAll(filepath.Join(b, "sub"), 0o755)
	os.MkdirAll(filepath.Join(mp, "inner"), 0o755)
	archive := "file://" + arch
	for _, c := range []struct {
		name, want string
		args       []string
	}{
		{"backing is the mountpoint", "are the same directory", []string{"--backing", b, "--archive", archive, "--state-dir", state, b}},
		{"mountpoint through a symlink", "are the same directory", []string{"--backing", b, "--archive", archive, "--state-dir", state, link}},
		{"backing inside the mountpoint", "the daemon would serve its own mount", []string{"--backing", filepath.Join(mp, "inner"), "--archive", archive, "--state-dir", state, mp}},
		{"mountpoint inside the backing", "is inside the backing directory", []string{"--backing", b, "--archive", archive, "--state-dir", state, filepath.Join(b, "sub")}},
		{"archive inside the backing", "the archive's own objects would be migrated", []string{"--backing", b, "--archive", "file://" + filepath.Join(b, "sub"), "--state-dir", state, mp}},
		{"archive is the backing", "are the same directory", []string{"--backing", b, "--archive", "file://" + link, "--state-dir", state, mp}},
		{"state inside the backing", "state directory", []string{"--backing", b, "--archive", archive, "--state-dir", filepath.Join(b, "sub"), mp}},
	} {
		t.Run(c.name, func(t *testing.T) { mountRefused(t, env, c.want, c.args...) })
	}
	if ents, _ := os.ReadDir(filepath.Join(b, "sub")); len(ents) != 0 {
		t.Fatalf("a refused mount wrote into the backing tree: %v", ents)
	}
	// A backing directory others can reach, refused unless allowed.
	openUp(priv)
	mountRefused(t, env, "--allow-user-backing", "--backing", b, "--archive", archive, "--state-dir", state, mp)
	os.Chmod(priv, 0o700)
}

// A second mount on a live mountpoint is refused whatever run directory it
// uses, and the first daemon keeps serving; a stopped (SIGSTOP) daemon's
// mount counts as live too.
func TestSecondMountOnLiveMountpointRefused(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	want := writeRandom(t, d.M("f"), 1<<20)
	other := t.TempDir()
	os.MkdirAll(filepath.Join(other, "b"), 0o755)
	env := []string{"CASCADEFS_RUN_DIR=" + other}
	args := []string{"--backing", filepath.Join(other, "b"), "--archive", "file://" + filepath.Join(other, "a"),
		"--state-dir", filepath.Join(other, "s"), d.Mountpoint}
	mountRefused2 := func() {
		t.Helper()
		cmd := exec.Command(testenv.Binary(t), append([]string{"mount"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "already mounted and served") {
			t.Fatalf("second mount on a live mountpoint: %v\n%s", err, out)
		}
	}
	mountRefused2()
	if !d.Running() || sumFile(t, d.M("f")) != want {
		t.Fatalf("the first daemon stopped serving after a refused second mount:\n%s", d.Log())
	}
	d.Pause()
	mountRefused2()
	d.Resume()
	if !d.Running() || sumFile(t, d.M("f")) != want {
		t.Fatalf("the first daemon stopped serving after a refused second mount while stopped:\n%s", d.Log())
	}
}

// Settings have floors (issue 20, item 5): a mount with a 1ns interval or
// event timeout is refused with the floor in the sentence. And every EIO
// a reader gets is logged with its cause: here a recall that the archive
// (a stopped MinIO) never answers within the event timeout.
func TestFloorsAndEveryEIOLogged(t *testing.T) {
	m := testenv.StartMinIO(t)
	d := testenv.NewDaemon(t, m.Bucket(t, "hsm"), m.EnvList(), "--event-timeout", "10s")
	env := append(m.EnvList(), "CASCADEFS_RUN_DIR="+d.RunDir)
	for _, c := range [][2]string{{"--interval", "at least 100ms"}, {"--event-timeout", "at least 10s"}} {
		mountRefused(t, env, c[1], c[0], "1ns", "--backing", d.Backing, "--archive", d.Archive,
			"--state-dir", filepath.Join(d.Dir, "state"), d.Mountpoint)
	}
	d.Start()
	writeRandom(t, d.M("f"), 2<<20)
	d.MustCLI("migrate", d.M("f"))
	testenv.DropCaches()
	m.Pause()
	defer m.Resume()
	start := time.Now()
	_, err := os.ReadFile(d.M("f"))
	m.Resume()
	if err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("read with the archive stopped: %v, want EIO", err)
	}
	t.Logf("EIO after %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(d.Log(), "the caller gets EIO") || !strings.Contains(d.Log(), "event timeout") {
		t.Fatalf("the EIO is not logged with its cause:\n%s", d.Log())
	}
}

// Failpoints are compiled only into test builds: the binary `make build`
// makes ignores CASCADEFS_FAILPOINTS (and says so), where the test build
// obeys it. A repository update is a point (repo-in-update) that any
// command reaches.
func TestProductionBuildHasNoFailpoints(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range []string{"repo", "backing", "archive"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	add := func(bin, name string) (string, error) {
		cmd := exec.Command(bin, "fs", "add", "--repo", filepath.Join(dir, "repo"), name,
			"--backing", filepath.Join(dir, "backing"), "--archive", "file://"+filepath.Join(dir, "archive"))
		cmd.Env = append(os.Environ(), "CASCADEFS_FAILPOINTS="+failpoint.RepoInUpdate+"=kill")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := add(testenv.Binary(t), "one"); err == nil {
		t.Fatalf("the test build ignored its failpoint:\n%s", out)
	}
	out, err := add(testenv.ProductionBinary(t), "two")
	if err != nil {
		t.Fatalf("the production build obeyed a failpoint: %v\n%s", err, out)
	}
	if !strings.Contains(out, "ignored") {
		t.Fatalf("the production build does not say it ignores CASCADEFS_FAILPOINTS:\n%s", out)
	}
}
