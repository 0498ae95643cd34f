package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"golang.org/x/sys/unix"
)

// The attack suite (issue 20): an unprivileged user of the mount tries to
// make the root daemon change files outside its tree by swapping a
// directory for a symlink to a decoy directory while holding descriptors
// into it, through a second node, through the backing directory, and as a
// racing rename-exchange on one mount. Every operation the FUSE layer does
// by name is tried; the decoy must be unchanged and the attacker must own
// nothing new outside the tree.

// attackerUID is the test's own unprivileged user: no entry in the
// password file, so nothing else on the machine is theirs.
const attackerUID = 64123

// decoy makes a root-only directory outside the tree with files, a
// directory and xattrs the attacks aim at, and returns its path.
func decoy(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "decoy")
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"secret", "victim", "victim2", "victim3"} {
		f := filepath.Join(p, name)
		if err := os.WriteFile(f, []byte("root's "+name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		unix.Setxattr(f, "user.keep", []byte("root"), 0)
	}
	os.Mkdir(filepath.Join(p, "vdir"), 0o700)
	return p
}

// snapshot describes every entry under dir: type, mode, owner, size,
// links, times, content hash and xattrs.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			out[p] = "error " + err.Error()
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d size=%d nlink=%d mtime=%d ctime=%d", st.Mode, st.Uid, st.Gid, st.Size, st.Nlink,
			st.Mtim.Nano(), st.Ctim.Nano())
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			sum := sha256.Sum256(data)
			desc += " sha256=" + hex.EncodeToString(sum[:8])
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			buf := make([]byte, 4096)
			n, _ := unix.Listxattr(p, buf)
			names := strings.Split(string(buf[:max(n, 0)]), "\x00")
			sort.Strings(names)
			for _, name := range names {
				if name != "" {
					v := make([]byte, 256)
					m, _ := unix.Getxattr(p, name, v)
					desc += fmt.Sprintf(" %s=%q", name, v[:max(m, 0)])
				}
			}
		}
		out[p] = desc
		return nil
	})
	return out
}

// checkDecoy fails the test if anything under the decoy changed, or if the
// attacker owns anything there.
func checkDecoy(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	after := snapshot(t, dir)
	for p, was := range before {
		if now, ok := after[p]; !ok {
			t.Errorf("outside the tree: %s was removed", p)
		} else if now != was {
			t.Errorf("outside the tree: %s changed:\n  was %s\n  now %s", p, was, now)
		}
	}
	for p, now := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("outside the tree: %s appeared (%s)", p, now)
		}
		if strings.Contains(now, fmt.Sprintf(" uid=%d ", attackerUID)) {
			t.Errorf("the attacker owns %s outside the tree", p)
		}
	}
}

// openUp lets the attacker reach p: every directory above it 0755.
func openUp(p string) {
	for ; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
}

// publicDir makes p, a directory everyone may write in (as /tmp, without
// the sticky bit: the attacker may rename there).
func publicDir(t *testing.T, p string) {
	t.Helper()
	if err := os.Mkdir(p, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o777)
}

// runAttacker runs this test binary as the attacker with helper role and
// environment, and returns what it printed; a failure fails the test.
func runAttacker(t *testing.T, dir, role string, timeout time.Duration, env ...string) string {
	t.Helper()
	out, err := runAttackerFor(t, dir, role, timeout, env...)
	if err != nil {
		t.Fatalf("attacker failed: %v\n%s", err, out)
	}
	return out
}

// runAttackerOut is runAttacker for a short role, returning its error.
func runAttackerOut(t *testing.T, dir, role string, env ...string) (string, error) {
	t.Helper()
	return runAttackerFor(t, dir, role, time.Minute, env...)
}

func runAttackerFor(t *testing.T, dir, role string, timeout time.Duration, env ...string) (string, error) {
	t.Helper()
	self, err := os.ReadFile(os.Args[0]) // go test's build directory is root's only
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "attacker")
	if _, err := os.Stat(bin); err != nil {
		if err := os.WriteFile(bin, self, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "CASCADEFS_TEST_HELPER="+role), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackerUID, Gid: attackerUID}, Setpgid: true}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("attacker still running after %s:\n%s", timeout, out.String())
	}
	return out.String(), err
}

// attackOps are the operations by name and by descriptor the attacker
// tries after the swap: fd is its own file in the swapped directory, dfd
// the directory itself, both opened before the swap.
func attackOps(fd, dfd int) []struct {
	name string
	op   func() error
} {
	uid := os.Getuid()
	return []struct {
		name string
		op   func() error
	}{
		{"fchmod", func() error { return unix.Fchmod(fd, 0o666) }},
		{"fchown", func() error { return unix.Fchown(fd, uid, uid) }},
		{"futimens", func() error { return unix.UtimesNanoAt(fd, "", []unix.Timespec{{}, {}}, unix.AT_EMPTY_PATH) }},
		{"fsetxattr", func() error { return unix.Fsetxattr(fd, "user.attack", []byte("1"), 0) }},
		{"fremovexattr", func() error { return unix.Fremovexattr(fd, "user.keep") }},
		{"fgetxattr", func() error {
			buf := make([]byte, 64)
			n, err := unix.Fgetxattr(fd, "user.keep", buf)
			if err == nil && string(buf[:n]) == "root" {
				return fmt.Errorf("read the decoy's xattr")
			}
			return err
		}},
		{"ftruncate", func() error { return unix.Ftruncate(fd, 1) }},
		{"create", func() error {
			f, err := unix.Openat(dfd, "planted", unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(f)
			}
			return err
		}},
		{"mkdir", func() error { return unix.Mkdirat(dfd, "pdir", 0o777) }},
		{"mknod", func() error { return unix.Mknodat(dfd, "pfifo", unix.S_IFIFO|0o666, 0) }},
		{"symlink", func() error { return unix.Symlinkat("/etc/shadow", dfd, "psym") }},
		{"link", func() error { return unix.Linkat(dfd, "secret", dfd, "plink", 0) }},
		{"chmod-name", func() error { return unix.Fchmodat(dfd, "victim3", 0o666, 0) }},
		{"chown-name", func() error { return unix.Fchownat(dfd, "victim3", uid, uid, 0) }},
		{"utimes-name", func() error { return unix.UtimesNanoAt(dfd, "victim3", []unix.Timespec{{}, {}}, 0) }},
		{"truncate-name", func() error {
			f, err := unix.Openat(dfd, "victim3", unix.O_WRONLY|unix.O_TRUNC, 0)
			if err == nil {
				unix.Close(f)
			}
			return err
		}},
		{"setxattr-name", func() error {
			return unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d/victim3", dfd), "user.attack", []byte("1"), 0)
		}},
		{"unlink", func() error { return unix.Unlinkat(dfd, "victim", 0) }},
		{"rmdir", func() error { return unix.Unlinkat(dfd, "vdir", unix.AT_REMOVEDIR) }},
		{"rename", func() error { return unix.Renameat(dfd, "victim2", dfd, "moved") }},
		{"rename-exchange", func() error {
			return unix.Renameat2(dfd, "secret", dfd, "victim3", unix.RENAME_EXCHANGE)
		}},
	}
}

// swapAttack is the attacker's side of the swap attacks, run as the
// attacker: it makes pub/x/d with its own file secret in it under the
// mount CASCADEFS_ATTACK_MOUNT, holds descriptors of both, swaps d for a
// symlink to the decoy under CASCADEFS_ATTACK_SWAP (another node's mount
// or the backing directory), and tries every operation through the held
// descriptors. It prints one line per operation.
func swapAttack() {
	mnt, swap, decoyDir := os.Getenv("CASCADEFS_ATTACK_MOUNT"), os.Getenv("CASCADEFS_ATTACK_SWAP"), os.Getenv("CASCADEFS_ATTACK_DECOY")
	must := func(err error) {
		if err != nil {
			fmt.Println("setup:", err)
			os.Exit(1)
		}
	}
	x := filepath.Join(mnt, "pub", "x")
	must(os.MkdirAll(filepath.Join(x, "d"), 0o755))
	must(os.WriteFile(filepath.Join(x, "d", "secret"), []byte("mine\n"), 0o600))
	unix.Setxattr(filepath.Join(x, "d", "secret"), "user.keep", []byte("mine"), 0)
	fd, err := unix.Open(filepath.Join(x, "d", "secret"), unix.O_RDWR, 0)
	must(err)
	dfd, err := unix.Open(filepath.Join(x, "d"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(err)
	sx := filepath.Join(swap, "pub", "x")
	must(os.Rename(filepath.Join(sx, "d"), filepath.Join(sx, "d.away")))
	must(os.Symlink(decoyDir, filepath.Join(sx, "d")))
	// Let the mount's caches expire, as an attacker would wait: entries
	// and attributes live a second.
	time.Sleep(1500 * time.Millisecond)
	for _, a := range attackOps(fd, dfd) {
		fmt.Printf("%s: %v\n", a.name, a.op())
	}
}

// raceAttack is the attacker of the one-mount race, run as the attacker
// inside the mount: one thread exchanges pub/x/d with a symlink to the
// decoy (renameat2 RENAME_EXCHANGE) as fast as it can, the other runs
// every operation through descriptors of d and of a file in it, for
// CASCADEFS_ATTACK_SECONDS.
func raceAttack() {
	mnt, decoyDir := os.Getenv("CASCADEFS_ATTACK_MOUNT"), os.Getenv("CASCADEFS_ATTACK_DECOY")
	secs, _ := strconv.Atoi(os.Getenv("CASCADEFS_ATTACK_SECONDS"))
	x := filepath.Join(mnt, "pub", "x")
	if err := os.MkdirAll(filepath.Join(x, "d"), 0o755); err != nil {
		fmt.Println("setup:", err)
		os.Exit(1)
	}
	os.WriteFile(filepath.Join(x, "d", "secret"), []byte("mine\n"), 0o600)
	os.Symlink(decoyDir, filepath.Join(x, "s"))
	fd, err1 := unix.Open(filepath.Join(x, "d", "secret"), unix.O_RDWR, 0)
	dfd, err2 := unix.Open(filepath.Join(x, "d"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err1 != nil || err2 != nil {
		fmt.Println("setup:", err1, err2)
		os.Exit(1)
	}
	stop := time.Now().Add(time.Duration(secs) * time.Second)
	swaps := 0
	go func() {
		for time.Now().Before(stop) {
			unix.Renameat2(unix.AT_FDCWD, filepath.Join(x, "d"), unix.AT_FDCWD, filepath.Join(x, "s"), unix.RENAME_EXCHANGE)
			swaps++
		}
	}()
	ops := attackOps(fd, dfd)
	tries := 0
	for time.Now().Before(stop) {
		for _, a := range ops {
			a.op()
			tries++
		}
		// Undo what landed inside, so that each round tries again.
		for _, name := range []string{"planted", "pfifo", "psym", "plink", "moved"} {
			unix.Unlinkat(dfd, name, 0)
		}
		unix.Unlinkat(dfd, "pdir", unix.AT_REMOVEDIR)
	}
	fmt.Printf("%d operations, %d exchanges in %ds\n", tries, swaps, secs)
}

// The swap through a second node: n1 holds descriptors into a directory
// that the attacker swaps for a symlink to the decoy through n2.
func TestAttackSwapThroughSecondNode(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	dec := decoy(t, c.Dir)
	before := snapshot(t, dec)
	openUp(c.Nodes["n1"].M(""))
	openUp(c.Nodes["n2"].M(""))
	publicDir(t, c.Nodes["n1"].M("pub"))
	out := runAttacker(t, c.Dir, "swap-attack", 2*time.Minute,
		"CASCADEFS_ATTACK_MOUNT="+c.Nodes["n1"].M(""), "CASCADEFS_ATTACK_SWAP="+c.Nodes["n2"].M(""), "CASCADEFS_ATTACK_DECOY="+dec)
	t.Logf("attacker:\n%s", out)
	checkDecoy(t, dec, before)
	checkAttackLandedInside(t, c.B("pub/x/d.away"), out)
}

// The swap through the backing directory, for a site that lets users
// reach it (--allow-user-backing).
func TestAttackSwapThroughBacking(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil, "--allow-user-backing")
	d.Start()
	dec := decoy(t, d.Dir)
	before := snapshot(t, dec)
	openUp(d.Mountpoint)
	openUp(d.Backing)
	publicDir(t, d.M("pub"))
	out := runAttacker(t, d.Dir, "swap-attack", 2*time.Minute,
		"CASCADEFS_ATTACK_MOUNT="+d.Mountpoint, "CASCADEFS_ATTACK_SWAP="+d.Backing, "CASCADEFS_ATTACK_DECOY="+dec)
	t.Logf("attacker:\n%s", out)
	checkDecoy(t, dec, before)
	checkAttackLandedInside(t, d.B("pub/x/d.away"), out)
}

// checkAttackLandedInside: the operations by name reached the directory
// the descriptor names (now pub/x/d.away), not the decoy.
func checkAttackLandedInside(t *testing.T, away, out string) {
	t.Helper()
	if !strings.Contains(out, "create: <nil>") {
		t.Errorf("create through the held directory failed; want it in %s", away)
	}
	for _, name := range []string{"planted", "pdir", "pfifo", "psym", "plink"} {
		if _, err := os.Lstat(filepath.Join(away, name)); err != nil {
			t.Errorf("%s: not made in the directory the request named: %v", name, err)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(away, "secret"), &st); err != nil || st.Mode&0o777 != 0o666 {
		t.Errorf("fchmod did not reach the attacker's own file: mode %o, %v", st.Mode&0o777, err)
	}
}

// The one-mount race: exchanges of a directory and a symlink to the decoy
// racing every operation for a minute (CASCADEFS_ATTACK_SECONDS to change).
func TestAttackRenameExchangeRace(t *testing.T) {
	secs := "60"
	if s := os.Getenv("CASCADEFS_ATTACK_SECONDS"); s != "" {
		secs = s
	}
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	dec := decoy(t, d.Dir)
	before := snapshot(t, dec)
	openUp(d.Mountpoint)
	publicDir(t, d.M("pub"))
	n, _ := strconv.Atoi(secs)
	out := runAttacker(t, d.Dir, "race-attack", time.Duration(n)*time.Second+2*time.Minute,
		"CASCADEFS_ATTACK_MOUNT="+d.Mountpoint, "CASCADEFS_ATTACK_DECOY="+dec, "CASCADEFS_ATTACK_SECONDS="+secs)
	t.Logf("attacker: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "operations") {
		t.Fatalf("the attacker did not run: %s", out)
	}
	checkDecoy(t, dec, before)
}
