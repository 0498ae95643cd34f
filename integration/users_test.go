package integration

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// TestMain lets the test binary serve as a helper process (a reader that
// can be interrupted by a signal).
func TestMain(m *testing.M) {
	switch os.Getenv("CASCADEFS_TEST_HELPER") {
	case "interruptible-read":
		interruptibleRead(os.Getenv("CASCADEFS_TEST_FILE"))
		return
	case "swap-loop":
		swapLoop(os.Getenv("CASCADEFS_TEST_FILE"))
		return
	case "swap-attack":
		swapAttack()
		return
	case "race-attack":
		raceAttack()
		return
	case "rpc-flood":
		floodAttack()
		return
	case "set-xattr":
		setXattr()
		return
	}
	os.Exit(m.Run())
}

// interruptibleRead reads 4 KiB with O_DIRECT on one thread, tells the test
// that thread's id, and prints the outcome: "read N" or "error ERRNO-NAME".
// O_DIRECT: a read through the page cache waits for the kernel's read-ahead,
// which only a fatal signal interrupts; a direct read is a FUSE request of
// its own, which any signal interrupts.
func interruptibleRead(path string) {
	runtime.LockOSThread()
	signal.Notify(make(chan os.Signal, 1), syscall.SIGUSR1) // caught, not fatal
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println("tid", syscall.Gettid())
	buf := make([]byte, 8192)
	aligned := buf[4096-int(uintptr(unsafe.Pointer(&buf[0]))%4096):][:4096]
	n, err := syscall.Pread(fd, aligned, 0)
	if err == syscall.EINTR {
		fmt.Println("error EINTR")
		return
	}
	fmt.Println("read", n, err)
}

// A reader waiting on a recall can be interrupted: a direct read gets EINTR
// from any signal, a cached read (cat) dies of Ctrl-C at once. The recall
// they started goes on and completes without them.
func TestInterruptedReaderGetsEINTR(t *testing.T) {
	m := testenv.StartMinIO(t)
	d := testenv.NewDaemon(t, m.Bucket(t, "hsm"), m.EnvList(), "--event-timeout", "2m")
	d.Start()
	want := writeRandom(t, d.M("f"), 3<<20+17)
	d.MustCLI("migrate", d.M("f"))
	testenv.DropCaches()

	m.Pause() // the archive hangs: the recall cannot finish
	resumed := false
	defer func() {
		if !resumed {
			m.Resume()
		}
	}()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CASCADEFS_TEST_HELPER=interruptible-read", "CASCADEFS_TEST_FILE="+d.M("f"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var tid int
	if _, err := fmt.Sscanf(<-lines, "tid %d", &tid); err != nil {
		t.Fatalf("helper did not start: %v", err)
	}
	select {
	case l := <-lines:
		t.Fatalf("read finished while the archive was paused: %q", l)
	case <-time.After(time.Second):
	}
	if err := syscall.Tgkill(cmd.Process.Pid, tid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-lines:
		if l != "error EINTR" {
			t.Fatalf("interrupted reader: %q, want EINTR", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("interrupted reader still blocked after 10s")
	}

	// Ctrl-C of cat, blocked in the kernel's read-ahead of the same stub.
	cat := exec.Command("/bin/cat", d.M("f"))
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	defer cat.Process.Kill() // the goroutine below reaps it
	catDone := make(chan error, 1)
	go func() { catDone <- cat.Wait() }()
	select {
	case err := <-catDone:
		t.Fatalf("cat finished while the archive was paused: %v", err)
	case <-time.After(time.Second):
	}
	cat.Process.Signal(syscall.SIGINT)
	select {
	case err := <-catDone:
		if ws, ok := cat.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
			t.Fatalf("cat after SIGINT: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cat still blocked 10s after SIGINT")
	}

	m.Resume()
	resumed = true
	deadline := time.Now().Add(60 * time.Second)
	for state(t, d, "f").State != "premigrated" {
		if time.Now().After(deadline) {
			t.Fatalf("the recall did not go on after its reader left: %+v", state(t, d, "f"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if sumFile(t, d.M("f")) != want {
		t.Fatal("recalled bytes differ")
	}
}

// asUser runs a command as user nobody and returns its stdout and error.
func asUser(t testing.TB, dir, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%v: %s", err, stderr.String())
	}
	return out, err
}

const nobody = 65534

// Every local user reads and writes through the mount under the usual
// permission rules (allow_other with default_permissions).
func TestOtherUsersThroughMount(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	// Let nobody reach the mount: t.TempDir makes its folders 0700.
	for p := d.Mountpoint; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	want := writeRandom(t, d.M("public"), 2<<20+5)
	writeRandom(t, d.M("secret"), 1<<20)
	os.Chmod(d.M("secret"), 0o600)
	os.Mkdir(d.M("home"), 0o755)
	os.Chown(d.M("home"), nobody, nobody)
	d.MustCLI("migrate", d.M("public"), d.M("secret"))
	testenv.DropCaches()

	out, err := asUser(t, d.Mountpoint, "/bin/cat", "public")
	if err != nil {
		t.Fatalf("nobody reads a public stub: %v", err)
	}
	if sha256.Sum256(out) != want {
		t.Fatal("nobody read wrong bytes")
	}
	if _, err := asUser(t, d.Mountpoint, "/bin/cat", "secret"); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("nobody read a 0600 file of root: %v", err)
	}
	if e := state(t, d, "secret"); e.State != "migrated" {
		t.Fatalf("a refused open recalled the file: %+v", e)
	}
	if _, err := asUser(t, d.Mountpoint, "/bin/sh", "-c", "echo x >> public"); err == nil {
		t.Fatal("nobody wrote a 0644 file of root")
	}
	if _, err := asUser(t, d.Mountpoint, "/bin/sh", "-c", "echo mine > home/mine && chmod 600 home/mine && cat home/mine"); err != nil {
		t.Fatalf("nobody writes in its own folder: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(d.B("home/mine"), &st); err != nil || st.Uid != nobody || st.Mode&0o777 != 0o600 {
		t.Fatalf("file created by nobody: uid %d mode %o err %v", st.Uid, st.Mode&0o777, err)
	}
}

// The server clears set-ID bits (CAP_HANDLE_KILLPRIV_V2): a write, a
// truncate or an O_TRUNC open by an unprivileged user drops set-user-ID,
// and set-group-ID when group execute is on; root's changes keep them.
// A write open that the kernel must serve by passthrough (the file is
// open that way already) drops them at the open.
func TestSetIDBitsClearedByUnprivilegedChanges(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	for p := d.Mountpoint; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	mode := func(name string) os.FileMode {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(d.M(name), &st); err != nil {
			t.Fatal(err)
		}
		var back syscall.Stat_t
		syscall.Stat(d.B(name), &back)
		if back.Mode != st.Mode {
			t.Fatalf("%s: mode %o through the mount, %o in the backing directory", name, st.Mode&07777, back.Mode&07777)
		}
		return os.FileMode(st.Mode & 07777)
	}
	setup := func(name string, perm uint32) {
		t.Helper()
		if err := os.WriteFile(d.M(name), []byte("data\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Chmod(d.M(name), perm); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, cmd string
		perm      uint32
		root      bool
		want      os.FileMode
	}{
		{"write", "printf x >> f", 06777, false, 0o777},
		{"truncate", "truncate -s 1 f", 06777, false, 0o777},
		{"otrunc", ": > f", 06777, false, 0o777},
		{"sgid-no-group-exec", "printf x >> f", 02766, false, 02766},
		{"root-write", "printf x >> f", 06777, true, 06777},
	} {
		t.Run(c.name, func(t *testing.T) {
			setup("f", c.perm)
			var err error
			if c.root {
				err = exec.Command("/bin/sh", "-c", "cd "+d.Mountpoint+" && "+c.cmd).Run()
			} else {
				_, err = asUser(t, d.Mountpoint, "/bin/sh", "-c", c.cmd)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := mode("f"); got != c.want {
				t.Fatalf("mode %o after %q, want %o", got, c.cmd, c.want)
			}
		})
	}
	t.Run("create-keeps-them", func(t *testing.T) {
		// The daemon gives a new file to its caller with a chown, which
		// clears set-ID bits: they must come back.
		fd, err := syscall.Open(d.M("c"), syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 06755)
		if err != nil {
			t.Fatal(err)
		}
		syscall.Close(fd)
		if got := mode("c"); got != 06755&^os.FileMode(syscall.Umask(0o22)) {
			t.Fatalf("created with 06755: mode %o", got)
		}
	})
	t.Run("forced-passthrough", func(t *testing.T) {
		setup("p", 06777)
		reader, err := os.Open(d.M("p")) // a passthrough open: later opens must be too
		if err != nil {
			t.Fatal(err)
		}
		defer reader.Close()
		if _, err := asUser(t, d.Mountpoint, "/bin/sh", "-c", "printf x >> p"); err != nil {
			t.Fatal(err)
		}
		if got := mode("p"); got != 0o777 {
			t.Fatalf("mode %o after a write beside a passthrough reader", got)
		}
	})
}
