package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/cluster/rpc"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// outsideFile makes a file beside the backing directory (outside the
// managed tree) and returns its path and bytes.
func outsideFile(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	out := filepath.Join(dir, "outside")
	os.MkdirAll(out, 0o755)
	data := bytes.Repeat([]byte("outside!"), 64<<10)
	p := filepath.Join(out, "x")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

// checkUntouched fails if the file outside the tree changed or got a record.
func checkUntouched(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file outside the tree changed: %v (%d bytes)", err, len(got))
	}
	if rec, err := stub.ReadRecordAt(p); rec != nil || err != nil {
		t.Fatalf("file outside the tree got a stub record: %+v %v", rec, err)
	}
}

// A peer (holding the key) that sends paths leading out of the tree is
// refused with a clear error, and nothing outside changes.
func TestNodeRPCRefusesPathsOutside(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1")
	c.Start("n1")
	outside, data := outsideFile(t, c.Dir)
	key, err := member.ReadKey(c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cl := rpc.NewClient("peer", rpc.NewKey(key))
	// A symlink inside the tree that points out of it.
	os.Symlink(filepath.Dir(outside), filepath.Join(c.Backing, "link"))
	for _, p := range []string{"../outside/x", "/" + strings.TrimPrefix(outside, "/"), "link/x", "a/../../outside/x"} {
		var reply struct {
			Error string `json:"error"`
		}
		err := cl.Call(context.Background(), "n1", c.Nodes["n1"].RPC, "/migrate",
			map[string]any{"fs": testenv.FSName, "path": p}, &reply)
		if err == nil && reply.Error == "" {
			t.Errorf("migrate %q through the node RPC was accepted", p)
		}
		msg := reply.Error
		if err != nil {
			msg = err.Error()
		}
		if !strings.Contains(msg, "leaves the filesystem") && !strings.Contains(msg, "symlink") {
			t.Errorf("migrate %q: unclear error %q", p, msg)
		}
		ev := dmapi.Event{Type: dmapi.Read, FS: testenv.FSName, Path: p, Length: -1}
		err = cl.Call(context.Background(), "n1", c.Nodes["n1"].RPC, "/event", map[string]any{"fs": testenv.FSName, "event": ev}, nil)
		var re *rpc.RemoteError
		if !errors.As(err, &re) {
			t.Errorf("event for %q: %v, want a refusal", p, err)
		}
	}
	checkUntouched(t, outside, data)
}

// A user of the mount (nobody, through allow_other) who swaps directories
// and files for symlinks to a directory outside the tree, in a loop, while
// the space monitor cycles and an admin migrates the tree over and over,
// never makes the root daemon touch anything outside: no record, no punch.
func TestSymlinkSwapChangesNothingOutside(t *testing.T) {
	run := time.Minute
	if s := os.Getenv("CASCADEFS_SWAP_SECONDS"); s != "" { // shorter by hand
		n, _ := strconv.Atoi(s)
		run = time.Duration(n) * time.Second
	}
	d := testenv.NewDaemon(t, "", nil, "--quota", "2MiB", "--high", "10", "--low", "5", "--interval", "100ms",
		"--release-wait", "0s")
	d.Start()
	for p := d.Mountpoint; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	out := filepath.Join(d.Dir, "outside")
	os.MkdirAll(out, 0o755)
	want := map[string][]byte{}
	for i := range 4 {
		name := filepath.Join(out, fmt.Sprintf("f%d", i))
		want[name] = bytes.Repeat([]byte{byte('a' + i)}, 64<<10)
		if err := os.WriteFile(name, want[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(d.M("home"), 0o755)
	os.Chown(d.M("home"), nobody, nobody)

	// The attacker (this test binary as nobody, see swapLoop) keeps
	// exchanging d with a symlink to the outside directory and g with a
	// symlink to a file there, and rewrites the real ones now and then.
	self, err := os.ReadFile(os.Args[0]) // go test's build directory is root's only
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(d.Dir, "attacker")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	attacker := exec.Command(bin, "-test.run=^$")
	attacker.Env = append(os.Environ(), "CASCADEFS_TEST_HELPER=swap-loop", "CASCADEFS_TEST_FILE="+out)
	attacker.Dir = d.M("home")
	attacker.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}, Setpgid: true}
	var attackerErr strings.Builder
	attacker.Stderr = &attackerErr
	if err := attacker.Start(); err != nil {
		t.Fatal(err)
	}
	stopAttacker := func() {
		syscall.Kill(-attacker.Process.Pid, syscall.SIGKILL)
		attacker.Wait()
	}
	defer stopAttacker()

	// The admin walks and migrates the tree again and again meanwhile,
	// and migrates files by name.
	deadline := time.Now().Add(run)
	walks := 0
	for time.Now().Before(deadline) {
		d.CLI("migrate", "-r", d.M("home"))
		d.CLI("migrate", "-r", "--premigrate", d.M("home"))
		// Files by name, as a user's list (or find) gave them: d/f0 may
		// be reached through the symlink by then.
		d.CLI("migrate", d.M("home/d/f0"), d.M("home/d/f1"), d.M("home/g"))
		walks++
	}
	stopAttacker()
	if !strings.Contains(attackerErr.String(), "swaps") {
		t.Fatalf("the attacker did not run: %s", attackerErr.String())
	}
	progress := strings.Split(attackerErr.String(), "\r")
	t.Logf("attacker: %s", strings.TrimSpace(progress[len(progress)-1]))
	for name, data := range want {
		checkUntouched(t, name, data)
	}
	if walks < 2 {
		t.Fatalf("only %d admin walks in %s", walks, run)
	}
	// The monitor and the admin did migrate inside the tree meanwhile (the
	// test exercised them).
	if !strings.Contains(d.Log(), "premigrated") {
		t.Fatalf("nothing was migrated inside the tree:\n%s", d.Log())
	}
	t.Logf("%d admin walks in %s", walks, run)
}

// swapLoop is the attacker of TestSymlinkSwapChangesNothingOutside, run in
// the current directory (inside the mount): d and g are a real directory
// (with files f0..f3) and a real file, d.link and g.link symlinks to the
// outside directory out and a file there; it exchanges each pair
// atomically (renameat2 RENAME_EXCHANGE) as fast as it can, rewriting the
// real files every 256 exchanges so the monitor has candidates.
func swapLoop(out string) {
	data := bytes.Repeat([]byte("attacker"), 8<<10)
	must := func(err error) {
		if err != nil {
			fmt.Fprintln(os.Stderr, "swap-loop:", err)
			os.Exit(1)
		}
	}
	must(os.MkdirAll("d", 0o755))
	must(os.Symlink(out, "d.link"))
	must(os.Symlink(filepath.Join(out, "f0"), "g.link"))
	write := func(dir, file string) {
		for k := range 4 {
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", k)), data, 0o644)
		}
		os.WriteFile(file, data, 0o644)
	}
	write("d", "g")
	swapped := false // d and g are the symlinks now
	start := time.Now()
	for n := 1; ; n++ {
		if n%256 == 0 {
			if swapped {
				write("d.link", "g.link")
			} else {
				write("d", "g")
			}
			fmt.Fprintf(os.Stderr, "\r%d swaps in %s", 2*n, time.Since(start).Round(time.Second))
		}
		unix.Renameat2(unix.AT_FDCWD, "d", unix.AT_FDCWD, "d.link", unix.RENAME_EXCHANGE)
		unix.Renameat2(unix.AT_FDCWD, "g", unix.AT_FDCWD, "g.link", unix.RENAME_EXCHANGE)
		swapped = !swapped
	}
}
