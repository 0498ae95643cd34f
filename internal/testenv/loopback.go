package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// StartLoopback mounts a plain go-fuse loopback (go-fuse's own example,
// of the version cascadefs uses) of a fresh directory, and returns its
// mountpoint: the peer a user would otherwise pick, for benchmarks. It
// is unmounted and stopped when the test ends.
func StartLoopback(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "loopback")
	build := exec.Command("go", "build", "-o", bin, "github.com/hanwen/go-fuse/v2/example/loopback")
	build.Dir = RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the go-fuse loopback: %v\n%s", err, out)
	}
	orig, mnt := filepath.Join(dir, "orig"), filepath.Join(dir, "mnt")
	os.Mkdir(orig, 0o755)
	os.Mkdir(mnt, 0o755)
	cmd := exec.Command(bin, "-q", "-allow-other", "-directmount", mnt, orig)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Unmount(mnt, 0)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			unmountDetach(mnt)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); !mountedAt(mnt); {
		select {
		case <-done:
			t.Fatal("the go-fuse loopback exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the go-fuse loopback has not mounted after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return mnt
}
