package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"golang.org/x/sys/unix"
)

// rebuildReport is what `cascadefs rebuild --json` prints.
type rebuildReport struct {
	Objects, NoMeta, Journal, Files, Dirs, Deleted, Replaced, Older int
	Bytes                                                           int64
	Conflicts                                                       []string
}

func rebuild(t *testing.T, d *testenv.Daemon, dir string, extra ...string) rebuildReport {
	t.Helper()
	args := append([]string{"rebuild", "--archive", d.Archive, "--name", "t1", "--json"}, extra...)
	out, errOut, err := d.ArchiveCLI(append(args, dir)...)
	if err != nil {
		t.Fatalf("rebuild: %v\n%s%s", err, out, errOut)
	}
	var rep rebuildReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("rebuild report: %v\n%s", err, out)
	}
	return rep
}

// emptyDir removes everything in dir (a lost disk, replaced by a new one).
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.RemoveAll(filepath.Join(dir, n.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

// A backing directory lost whole is made again from the archive alone:
// every migrated or premigrated file as a stub at its current path (after
// renames of it and of its directories), with its owner, mode, times and
// extended attributes, whose bytes come back at the first read; deleted
// files only when asked.
func TestRebuildFromTheArchive(t *testing.T) {
	archives(t, func(t *testing.T, newDaemon func(extra ...string) *testenv.Daemon) {
		d := newDaemon("--retention", "1h")
		os.MkdirAll(d.M("proj/data"), 0o755)
		os.Chown(d.M("proj"), 64123, 64123)
		os.Chmod(d.M("proj"), 0o750)
		sumA := writeRandom(t, d.M("proj/data/a"), 1<<20+7)
		sumB := writeRandom(t, d.M("proj/b"), 300<<10)
		sumC := writeRandom(t, d.M("c"), 5000)
		sumP := writeRandom(t, d.M("premigrated"), 200<<10)
		writeRandom(t, d.M("proj/gone"), 100<<10)
		writeRandom(t, d.M("never-migrated"), 1000)
		os.Chown(d.M("proj/data/a"), 64123, 64124)
		os.Chmod(d.M("proj/data/a"), 0o640)
		unix.Setxattr(d.M("proj/data/a"), "user.project", []byte("apollo"), 0)
		old := time.Date(2021, 3, 4, 5, 6, 7, 8, time.UTC)
		must(t, unix.Setxattr(d.M("proj/data/a"), "trusted.planted", []byte("x"), 0))
		must(t, os.Chmod(d.M("proj/b"), 0o4755))
		os.Chtimes(d.M("proj/data/a"), old, old)
		d.MustCLI("migrate", d.M("proj/data/a"), d.M("proj/b"), d.M("c"), d.M("proj/gone"))
		d.MustCLI("migrate", "--premigrate", d.M("premigrated"))
		// After the uploads: renames of a directory and of a file, a delete.
		must(t, os.Rename(d.M("proj/data"), d.M("proj/moved")))
		must(t, os.Rename(d.M("c"), d.M("proj/c2")))
		must(t, os.Remove(d.M("proj/gone")))
		d.Stop() // the journal's last batch is written at the stop

		emptyDir(t, d.Backing)
		rep := rebuild(t, d, d.Backing)
		if rep.Files != 4 || rep.Deleted != 1 || rep.NoMeta != 0 || len(rep.Conflicts) != 0 {
			t.Fatalf("rebuild report: %+v", rep)
		}
		if _, err := os.Stat(filepath.Join(d.Backing, ".cascadefs-rebuild")); err == nil {
			t.Fatal("the rebuild's staging directory was left")
		}
		d.Start()
		for p, want := range map[string][32]byte{"proj/moved/a": sumA, "proj/b": sumB, "proj/c2": sumC, "premigrated": sumP} {
			if got := ls(t, d, d.M(p))[d.M(p)]; got.State != "migrated" {
				t.Errorf("%s rebuilt as %q, want a migrated stub", p, got.State)
			}
			if sumFile(t, d.M(p)) != want {
				t.Errorf("%s reads other bytes after the rebuild", p)
			}
		}
		for _, p := range []string{"proj/data", "c", "proj/gone", "never-migrated"} {
			if _, err := os.Lstat(d.M(p)); err == nil {
				t.Errorf("%s is there after the rebuild", p)
			}
		}
		var st unix.Stat_t
		must(t, unix.Stat(d.M("proj/moved/a"), &st))
		if st.Uid != 64123 || st.Gid != 64124 || st.Mode&0o7777 != 0o640 || st.Mtim.Nano() != old.UnixNano() {
			t.Errorf("rebuilt file's owner, mode or mtime: %d:%d %o %v", st.Uid, st.Gid, st.Mode&0o7777, time.Unix(0, st.Mtim.Nano()))
		}
		buf := make([]byte, 64)
		if n, err := unix.Getxattr(d.M("proj/moved/a"), "user.project", buf); err != nil || string(buf[:n]) != "apollo" {
			t.Errorf("rebuilt file's extended attribute: %q %v", buf[:max(n, 0)], err)
		}
		if _, err := unix.Getxattr(d.B("proj/moved/a"), "trusted.planted", buf); err == nil {
			t.Error("a trusted.* attribute came back from the archive")
		}
		must(t, unix.Stat(d.M("proj/b"), &st))
		if st.Mode&0o7777 != 0o755 {
			t.Errorf("a set-user-ID file came back from the archive with mode %o", st.Mode&0o7777)
		}
		must(t, unix.Stat(d.M("proj"), &st))
		if st.Uid != 64123 || st.Mode&0o7777 != 0o750 {
			t.Errorf("rebuilt directory's owner or mode: %d %o", st.Uid, st.Mode&0o7777)
		}

		// The deleted file, with --include-deleted; a directory that is
		// not empty is refused.
		other := t.TempDir()
		rep = rebuild(t, d, other, "--include-deleted")
		if rep.Files != 5 {
			t.Fatalf("with deleted files: %+v", rep)
		}
		if _, err := os.Stat(filepath.Join(other, "proj/gone")); err != nil {
			t.Fatalf("deleted file not brought back with --include-deleted: %v", err)
		}
		out, errOut, err := d.ArchiveCLI("rebuild", "--archive", d.Archive, "--name", "t1", other)
		if err == nil || !strings.Contains(errOut, "not empty") {
			t.Fatalf("rebuild into a directory that is not empty: %v\n%s%s", err, out, errOut)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A rebuild killed while it makes its tree, or while it moves the
// complete tree into place, is run again and makes the whole tree once.
func TestKill9DuringRebuild(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	sums := map[string][32]byte{}
	for _, p := range []string{"a/1", "a/2", "b/3", "4", "5"} {
		os.MkdirAll(d.M(filepath.Dir(p)), 0o755)
		sums[p] = writeRandom(t, d.M(p), 10000)
		d.MustCLI("migrate", d.M(p))
	}
	d.Stop()
	for _, point := range []string{"rebuild-before-complete=kill", "rebuild-inside-place=kill@2"} {
		emptyDir(t, d.Backing)
		args := []string{"rebuild", "--archive", d.Archive, "--name", "t1", d.Backing}
		d.Env = []string{"CASCADEFS_FAILPOINTS=" + point}
		out, errOut, err := d.ArchiveCLI(args...)
		d.Env = nil
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("%s: the rebuild was not killed: %v\n%s%s", point, err, out, errOut)
		}
		rep := rebuild(t, d, d.Backing)
		if point == "rebuild-before-complete=kill" && rep.Files != 5 {
			t.Fatalf("%s: the second run made %d stubs, want 5 (a fresh start)", point, rep.Files)
		}
		if point == "rebuild-inside-place=kill@2" && rep.Files != 0 {
			t.Fatalf("%s: the second run made %d stubs, want none (it finishes the move)", point, rep.Files)
		}
		d.Start()
		for p, want := range sums {
			if sumFile(t, d.M(p)) != want {
				t.Errorf("%s: %s reads other bytes after the rebuild was run again", point, p)
			}
		}
		if got := ls(t, d, d.M("")); len(got) != 5 { // no file twice, none lost
			t.Errorf("%s: %d entries after the second run: %v", point, len(got), got)
		}
		d.Stop()
	}
}
