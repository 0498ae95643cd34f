package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/migrate"
)

func reconcile(t *testing.T, d *testenv.Daemon, args ...string) (*migrate.ReconcileReport, error) {
	t.Helper()
	out, stderr, err := d.CLI(append(append([]string{"reconcile", "--json"}, args...), d.Mountpoint)...)
	var rep migrate.ReconcileReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("reconcile %v: %v (%v)\n%s%s", args, jerr, err, out, stderr)
	}
	return &rep, err
}

// Reconcile finds the orphan a crash left (with the node's state lost),
// and the object of a file removed behind the mount's back, deletes them,
// reports a stub whose object was deleted behind the archive's back, and
// never deletes an object that a renamed, hard-linked, premigrated or
// partly recalled file uses.
func TestReconcile(t *testing.T) {
	archives(t, func(t *testing.T, newDaemon func(extra ...string) *testenv.Daemon) {
		d := newDaemon("--small-file", "1")
		// A crash after an upload, before its record: kill -9 at the point.
		writeRandom(t, d.M("crashed"), 2<<20)
		d.Stop()
		d.Env = append(d.Env, "CASCADEFS_FAILPOINTS="+failpoint.MigrateAfterUpload+"=kill")
		d.Start()
		d.CLI("migrate", d.M("crashed")) // the daemon dies
		if !d.Exited(10 * time.Second) {
			t.Fatal("the daemon did not die at the failpoint")
		}
		d.Env = d.Env[:len(d.Env)-1]
		// ... and the node's state (its DESTROY queue) was lost with it.
		os.RemoveAll(filepath.Join(d.Dir, "state"))
		d.Start()
		if n := len(d.ArchiveObjects(t)); n == 0 {
			t.Fatal("the crash left no object to find")
		}

		sums := map[string][32]byte{}
		for _, n := range []string{"mig", "pre", "ren", "link", "part", "lost", "gone"} {
			sums[n] = writeRandom(t, d.M(n), 3<<20)
		}
		d.MustCLI("migrate", d.M("mig"), d.M("ren"), d.M("link"), d.M("part"), d.M("lost"), d.M("gone"))
		d.MustCLI("migrate", "--premigrate", d.M("pre"))
		os.Mkdir(d.M("dir"), 0o755)
		if err := os.Rename(d.M("ren"), d.M("dir/ren")); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(d.M("link"), d.M("dir/link2")); err != nil {
			t.Fatal(err)
		}
		os.Remove(d.M("link")) // dir/link2 keeps the file
		f, err := os.Open(d.M("part"))
		if err != nil {
			t.Fatal(err)
		}
		f.ReadAt(make([]byte, 4096), 1<<20) // a partial recall
		f.Close()
		lostKey := state(t, d, "lost").Object
		goneKey := state(t, d, "gone").Object
		// Removed behind the mount's back (as a restore from a backup
		// would): no DESTROY event, its object is an orphan.
		os.Remove(d.B("gone"))
		delete(sums, "gone")
		// Deleted behind the archive's back: a damaged stub.
		deleteObject(t, d, lostKey)

		dry, err := reconcile(t, d, "--dry-run", "--grace", "0s")
		if err == nil {
			t.Error("reconcile exited 0 with a damaged stub")
		}
		if dry.OrphanCount < 2 || dry.Deleted != 0 {
			t.Errorf("dry run: %d orphans, %d deleted", dry.OrphanCount, dry.Deleted)
		}
		if len(dry.Damaged) != 1 || dry.Damaged[0].Path != "lost" || !strings.Contains(dry.Damaged[0].Problem, "missing") {
			t.Errorf("damaged: %+v", dry.Damaged)
		}
		before := d.ArchiveObjects(t)
		// The default grace keeps every young orphan.
		kept, _ := reconcile(t, d)
		if kept.Deleted != 0 {
			t.Errorf("the default grace deleted %d young objects", kept.Deleted)
		}
		// Object stores keep times to the second (versitygw): an object
		// of the same second as the run's clock marker cannot be told
		// older than the run, and reconcile keeps it. A second later all
		// of them can.
		time.Sleep(1100 * time.Millisecond)
		rep, _ := reconcile(t, d, "--grace", "0s")
		if rep.Deleted != rep.OrphanCount || rep.Deleted < 2 {
			t.Errorf("deleted %d of %d orphans: %+v", rep.Deleted, rep.OrphanCount, rep.Orphans)
		}
		deleted := map[string]bool{}
		for _, o := range rep.Orphans {
			deleted[strings.TrimSuffix(o.Key, ".sums")] = o.Deleted
		}
		if !deleted[goneKey] {
			t.Errorf("the object of the file removed behind the mount's back was not deleted: %+v", rep.Orphans)
		}
		after := d.ArchiveObjects(t)
		if len(after) != len(before)-int(rep.Deleted) {
			t.Errorf("archive objects %d -> %d, report says %d deleted", len(before), len(after), rep.Deleted)
		}
		again, _ := reconcile(t, d, "--grace", "0s")
		if again.OrphanCount != 0 {
			t.Errorf("a second reconcile still finds %d orphans", again.OrphanCount)
		}
		st := d.MustCLI("status")
		if !strings.Contains(st, "last reconcile") {
			t.Errorf("status does not show the last reconcile:\n%s", st)
		}
		testenv.DropCaches()
		for n, want := range map[string]string{"mig": "mig", "pre": "pre", "dir/ren": "ren", "dir/link2": "link", "part": "part"} {
			if sumFile(t, d.M(n)) != sums[want] {
				t.Errorf("%s reads back wrong bytes after reconcile", n)
			}
		}
	})
}

// deleteObject removes an object (and its checksum object) behind the
// archive's back.
func deleteObject(t *testing.T, d *testenv.Daemon, key string) {
	t.Helper()
	if dir, ok := strings.CutPrefix(d.Archive, "file://"); ok {
		if err := os.Remove(filepath.Join(dir, key)); err != nil {
			t.Fatal(err)
		}
		return
	}
	testenv.DeleteObject(t, d.Archive, d.Env, key)
}

// Asked through a node that does not own the filesystem, reconcile runs
// on the owner.
func TestReconcileRunsOnTheOwner(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	writeRandom(t, n1.M("gone"), 1<<20)
	c.MustCLI("migrate", n1.M("gone"))
	os.Remove(c.B("gone")) // behind the mount's back: an orphan
	out := c.MustCLI("reconcile", "--json", "--grace", "0s", filepath.Dir(n2.M("gone")))
	var rep migrate.ReconcileReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Deleted != 1 {
		t.Errorf("deleted %d, want the one orphan: %+v", rep.Deleted, rep.Orphans)
	}
	if !strings.Contains(n1.Log(), "reconcile done") || strings.Contains(n2.Log(), "reconcile done") {
		t.Error("the reconcile did not run on the owner n1")
	}
	if objs := c.ArchiveObjects(); len(objs) != 0 {
		t.Errorf("objects left: %v", objs)
	}
}
