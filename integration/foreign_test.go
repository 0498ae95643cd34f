package integration

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// copyRecord copies the stub record of the backing file from onto to.
func copyRecord(t *testing.T, from, to string) {
	t.Helper()
	buf := make([]byte, 8192)
	n, err := unix.Lgetxattr(from, stub.XattrName, buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(to, stub.XattrName, buf[:n], 0); err != nil {
		t.Fatal(err)
	}
}

// A stub record is trusted only on the file it was written for (issue
// 20, item 2). A user who can write in the backing tree copies another
// user's record onto a file of their own: reading it gets EIO with a log
// line that says why, removing it through the mount deletes nothing in
// the archive, and the other user's file reads back. A root-made copy (a
// restore of stubs with their xattrs) is not trusted either, and its
// object stays: reconcile reports the copy and deletes nothing it names.
func TestCopiedRecordNotTrusted(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil, "--allow-user-backing")
	d.Start()
	os.Chmod(filepath.Dir(d.Backing), 0o755) // the site lets users reach the backing tree
	openUp(d.Mountpoint)
	want := writeRandom(t, d.M("victim"), 3<<20)
	os.Chmod(d.M("victim"), 0o644)
	d.MustCLI("migrate", d.M("victim"))
	key := state(t, d, "victim").Object
	objects := len(d.ArchiveObjects(t))

	// The attacker's own file, made through the mount, given the victim's
	// record through the backing tree (as the attacker: user.* xattrs of
	// their own file).
	publicDir(t, d.M("pub"))
	if _, err := asUID(t, d.Mountpoint, "/bin/sh", "-c", "echo mine > pub/evil"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	n, err := unix.Lgetxattr(d.B("victim"), stub.XattrName, buf)
	if err != nil {
		t.Fatal(err)
	}
	// As the attacker (setfattr may be missing: the test binary does it).
	out, err := runAttackerOut(t, d.Dir, "set-xattr", "CASCADEFS_XATTR_FILE="+d.B("pub/evil"),
		"CASCADEFS_XATTR_NAME="+stub.XattrName, "CASCADEFS_XATTR_HEX="+hex.EncodeToString(buf[:n]))
	if err != nil {
		t.Fatalf("attacker could not set the xattr: %v %s", err, out)
	}
	testenv.DropCaches()
	if _, err := os.ReadFile(d.M("pub/evil")); err == nil {
		t.Fatal("a file with another file's record was read")
	} else if !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("read of a copied record: %v, want EIO", err)
	}
	if !strings.Contains(d.Log(), "belongs to another file") {
		t.Fatalf("no log line says why the read failed:\n%s", d.Log())
	}
	if e := state(t, d, "pub/evil"); e.State != "damaged" || !strings.Contains(e.Error, "belongs to another file") {
		t.Fatalf("ls of the copy: %+v", e)
	}
	if _, err := asUID(t, d.Mountpoint, "/bin/rm", "pub/evil"); err != nil {
		t.Fatalf("rm of the attacker's file: %v", err)
	}
	d.MustCLI("status") // the DESTROY queue runs
	if got := d.ArchiveObjects(t); len(got) != objects || !contains(got, key) {
		t.Fatalf("removing a file with a copied record deleted archive objects: %v, want %s kept", got, key)
	}

	// A root-made copy, as a restore would: same bytes, same xattrs,
	// another inode.
	copyStub(t, d.B("victim"), d.B("restored"))
	testenv.DropCaches()
	if _, err := os.ReadFile(d.M("restored")); err == nil {
		t.Fatal("a restored copy with its original's record was read as a stub")
	}
	rep, _ := reconcile(t, d, "--grace", "0s")
	if rep.Deleted != 0 || !contains(d.ArchiveObjects(t), key) {
		t.Fatalf("reconcile deleted objects while a copy names them: %+v", rep)
	}
	found := false
	for _, dm := range rep.Damaged {
		found = found || (dm.Path == "restored" && strings.Contains(dm.Problem, "belongs to another file"))
	}
	if !found {
		t.Fatalf("reconcile does not report the copied record: %+v", rep.Damaged)
	}
	if err := os.Remove(d.M("restored")); err != nil {
		t.Fatal(err)
	}
	if got := d.ArchiveObjects(t); !contains(got, key) {
		t.Fatalf("removing the restored copy deleted its original's object")
	}
	testenv.DropCaches()
	if sumFile(t, d.M("victim")) != want {
		t.Fatal("the victim's file reads wrong bytes")
	}
}

// copyStub copies a stub in the backing tree with its size (sparse) and
// its xattrs, as root's restore of a backup would.
func copyStub(t *testing.T, from, to string) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(from, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(to, st.Size); err != nil {
		t.Fatal(err)
	}
	copyRecord(t, from, to)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// setXattr is the attacker's setfattr: CASCADEFS_XATTR_NAME (hex value
// CASCADEFS_XATTR_HEX) on CASCADEFS_XATTR_FILE.
func setXattr() {
	v, _ := hex.DecodeString(os.Getenv("CASCADEFS_XATTR_HEX"))
	if err := unix.Lsetxattr(os.Getenv("CASCADEFS_XATTR_FILE"), os.Getenv("CASCADEFS_XATTR_NAME"), v, 0); err != nil {
		fmt.Println("setxattr:", err)
		os.Exit(1)
	}
}

// asUID runs a command as the attacker and returns its output.
func asUID(t *testing.T, dir, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackerUID, Gid: attackerUID}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%v: %s", err, out)
	}
	return out, err
}
