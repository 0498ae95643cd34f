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

// With a retention, the archive copy of a deleted file and the old copy
// of a migrated file that is rewritten stay in the archive, and `undelete
// --list` names them (path, what happened, size, owner, until when). With
// the retention set to 0 at the next start, the kept copies go. Before,
// every such copy was deleted at once.
func TestDeletedVersionsAreKept(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil, "--retention", "1h")
	d.Start()
	os.Mkdir(d.M("dir"), 0o755)
	goneSum := writeRandom(t, d.M("dir/gone"), 1<<20)
	oldSum := writeRandom(t, d.M("rewritten"), 300<<10)
	writeRandom(t, d.M("dropped"), 100<<10)
	os.WriteFile(d.M("dir/stays"), []byte("kept as it is"), 0o644)
	if err := os.Chown(d.M("dir/gone"), 64123, 64123); err != nil {
		t.Fatal(err)
	}
	os.Chmod(d.M("dir/gone"), 0o640)
	unix.Setxattr(d.M("dir/gone"), "user.project", []byte("apollo"), 0)
	old := time.Date(2020, 5, 17, 10, 0, 0, 123, time.UTC)
	os.Chtimes(d.M("dir/gone"), old, old)
	d.MustCLI("migrate", d.M("dir/gone"), d.M("rewritten"), d.M("dir/stays"), d.M("dropped"))
	key := func(p string) string {
		var entries []struct{ Object string }
		json.Unmarshal([]byte(d.MustCLI("ls", "--json", p)), &entries)
		if len(entries) != 1 || entries[0].Object == "" {
			t.Fatalf("no object for %s", p)
		}
		return entries[0].Object
	}
	goneKey, oldKey, droppedKey := key(d.M("dir/gone")), key(d.M("rewritten")), key(d.M("dropped"))

	for _, p := range []string{d.M("dir/gone"), d.M("dropped")} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(d.M("rewritten"), []byte("new contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	type kept struct {
		Path, Fate, Key string
		Size            int64
		UID             uint32
		At, Until       time.Time
	}
	list := func(p string) []kept {
		var out []kept
		if err := json.Unmarshal([]byte(d.MustCLI("undelete", "--list", "--json", p)), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	testenv.WaitFor(t, "three kept versions", 20*time.Second, func() bool { return len(list(d.M(""))) == 3 })
	time.Sleep(3 * time.Second) // a pass or two of the DESTROY queue
	if !objectExists(d, goneKey) || !objectExists(d, oldKey) {
		t.Fatalf("kept copies deleted within the retention: %v %v", objectExists(d, goneKey), objectExists(d, oldKey))
	}
	under := list(d.M("dir"))
	if len(under) != 1 {
		t.Fatalf("under dir: %+v", under)
	}
	g := under[0]
	if g.Path != d.M("dir/gone") || g.Fate != "deleted" || g.Key != goneKey || g.Size != 1<<20 || g.UID != 64123 ||
		g.Until.Sub(g.At) != time.Hour || time.Since(g.At) > time.Minute {
		t.Errorf("kept deleted file: %+v", g)
	}
	if r := list(d.M("rewritten")); len(r) != 1 || r[0].Fate != "replaced" || r[0].Key != oldKey || r[0].Size != 300<<10 {
		t.Errorf("kept old version: %+v", r)
	}
	if out := d.MustCLI("undelete", "--list", d.M("")); !strings.Contains(out, "KEPT UNTIL") || !strings.Contains(out, d.M("dir/gone")) {
		t.Errorf("undelete --list:\n%s", out)
	}

	// Brought back: a migrated stub, as it was, read from the archive.
	d.MustCLI("undelete", d.M("dir/gone"))
	var st unix.Stat_t
	if err := unix.Stat(d.M("dir/gone"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 64123 || st.Gid != 64123 || st.Mode&0o7777 != 0o640 || st.Size != 1<<20 || st.Mtim.Nano() != old.UnixNano() {
		t.Errorf("undeleted file: uid %d gid %d mode %o size %d mtime %v", st.Uid, st.Gid, st.Mode&0o7777, st.Size, time.Unix(0, st.Mtim.Nano()))
	}
	if v := make([]byte, 16); func() int { n, _ := unix.Getxattr(d.M("dir/gone"), "user.project", v); return n }() != 6 {
		t.Errorf("undeleted file lost its extended attribute")
	}
	if out := d.MustCLI("ls", d.M("dir/gone")); !strings.Contains(out, "migrated") || !strings.Contains(out, goneKey) {
		t.Errorf("undeleted file:\n%s", out)
	}
	testenv.DropCaches()
	if sumFile(t, d.M("dir/gone")) != goneSum {
		t.Error("the undeleted file reads wrong bytes")
	}
	// A file is never replaced: the old version of a rewritten one goes
	// elsewhere.
	if _, errOut, err := d.CLI("undelete", d.M("rewritten")); err == nil || !strings.Contains(errOut, "--to") {
		t.Errorf("undelete over an existing file: %v %s", err, errOut)
	}
	if got, _ := os.ReadFile(d.M("rewritten")); string(got) != "new contents" {
		t.Fatalf("a refused undelete changed the file: %q", got)
	}
	d.MustCLI("undelete", "--to", d.M("rewritten.old"), d.M("rewritten"))
	if sumFile(t, d.M("rewritten.old")) != oldSum {
		t.Error("the old version reads wrong bytes")
	}
	if l := list(d.M("")); len(l) != 1 || l[0].Key != droppedKey {
		t.Errorf("kept after two undeletes: %+v", l)
	}
	if _, errOut, err := d.CLI("undelete", d.M("dir/nothing")); err == nil || !strings.Contains(errOut, "no deleted or replaced version") {
		t.Errorf("undelete of what was never kept: %v %s", err, errOut)
	}

	// The retention set to 0: what is still kept goes; what was brought
	// back stays.
	d.Stop()
	d.Args = []string{"--retention", "0"}
	d.Start()
	testenv.WaitFor(t, "the kept copy deleted", 20*time.Second, func() bool { return !objectExists(d, droppedKey) })
	if !objectExists(d, goneKey) || !objectExists(d, oldKey) {
		t.Error("the object of an undeleted file went")
	}
	if l := list(d.M("")); len(l) != 0 {
		t.Errorf("listed with retention 0: %+v", l)
	}
	if _, err := os.Stat(filepath.Join(d.Backing, "dir", "stays")); err != nil {
		t.Fatal(err)
	}
	if !objectExists(d, key(d.M("dir/stays"))) {
		t.Error("the object of a file still there went")
	}
}

// In a cluster the kept versions are listed through any node, and a
// takeover keeps them: the new owner's DESTROY queue honours the
// retention of the entries the old one committed, and an undelete asked
// through a node that is not the owner brings the file back.
func TestKeptVersionsOutliveAFailover(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2", "n3")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "retention=1h")
	c.Start("n1", "n2", "n3")
	n1, n2, n3 := c.Nodes["n1"], c.Nodes["n2"], c.Nodes["n3"]
	want := writeRandom(t, n1.M("f"), 512<<10)
	c.MustCLI("migrate", n1.M("f"))
	before := c.ArchiveObjects()
	if err := os.Remove(n1.M("f")); err != nil {
		t.Fatal(err)
	}
	listed := func(n *testenv.Node) int {
		var out []struct{ Path string }
		json.Unmarshal([]byte(c.MustCLI("undelete", "--list", "--json", n.M(""))), &out)
		return len(out)
	}
	testenv.WaitFor(t, "the deleted file listed through n2", 20*time.Second, func() bool { return listed(n2) == 1 })
	n1.Kill9()
	owner, _ := waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" || o == "n3" })
	asker := n3
	if owner == "n3" {
		asker = n2
	}
	time.Sleep(3 * time.Second) // passes of the new owner's DESTROY queue
	if after := c.ArchiveObjects(); len(after) != len(before) {
		t.Fatalf("objects after the takeover: %v, before: %v", after, before)
	}
	if listed(n2) != 1 {
		t.Fatal("the kept version is no longer listed after the takeover")
	}
	c.MustCLI("undelete", asker.M("f"))
	testenv.DropCaches()
	for _, n := range []*testenv.Node{n2, n3} {
		if sumFile(t, n.M("f")) != want {
			t.Errorf("the undeleted file reads wrong bytes through %s", n.Name)
		}
	}
	if listed(n2) != 0 {
		t.Error("the undeleted version is still listed")
	}
}

// A kill -9 in each window of an undelete loses nothing: the version is
// still kept and listed, a second undelete brings it back whole, and no
// hidden file is left.
func TestKill9DuringUndelete(t *testing.T) {
	for _, point := range []string{"undelete-after-stub", "undelete-before-rename"} {
		t.Run(point, func(t *testing.T) {
			d := testenv.NewDaemon(t, "", nil, "--retention", "1h")
			d.Start()
			want := writeRandom(t, d.M("f"), 2<<20)
			d.MustCLI("migrate", d.M("f"))
			os.Remove(d.M("f"))
			listed := func() int {
				var out []struct{ Path string }
				json.Unmarshal([]byte(d.MustCLI("undelete", "--list", "--json", d.M(""))), &out)
				return len(out)
			}
			testenv.WaitFor(t, "the deleted file kept", 20*time.Second, func() bool { return listed() == 1 })
			d.Stop()
			d.Env = []string{"CASCADEFS_FAILPOINTS=" + point + "=kill"}
			d.Start()
			if _, _, err := d.CLI("undelete", d.M("f")); err == nil {
				t.Fatal("undelete went through a kill point")
			}
			if !d.Exited(10 * time.Second) {
				t.Fatal("the daemon was not killed at " + point)
			}
			d.Env = nil
			d.Start()
			time.Sleep(3 * time.Second) // passes of the DESTROY queue
			if listed() != 1 {
				t.Fatal("the version is no longer kept after the kill")
			}
			d.MustCLI("undelete", d.M("f"))
			testenv.DropCaches()
			if sumFile(t, d.M("f")) != want {
				t.Error("the undeleted file reads wrong bytes")
			}
			if hidden, _ := filepath.Glob(filepath.Join(d.Backing, ".cascadefs-undelete-*")); len(hidden) != 0 {
				t.Errorf("hidden files left: %v", hidden)
			}
			if listed() != 0 {
				t.Error("still listed after the undelete")
			}
		})
	}
}

// Killed after the undeleted stub is in place but before its queue entry
// goes, then started with the retention at 0: the entry names the new
// file (step 2 of migrate.DestroyQueue.Undelete), so the DESTROY queue
// sees a file that uses the object, drops the entry and keeps the object.
// Without that step the object of the file just brought back is deleted.
func TestUndeletedFileKeepsItsObjectAfterACrash(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil, "--retention", "1h")
	d.Start()
	want := writeRandom(t, d.M("f"), 1<<20)
	d.MustCLI("migrate", d.M("f"))
	var entries []struct{ Object string }
	json.Unmarshal([]byte(d.MustCLI("ls", "--json", d.M("f"))), &entries)
	os.Remove(d.M("f"))
	testenv.WaitFor(t, "the deleted file kept", 20*time.Second, func() bool {
		return strings.Contains(d.MustCLI("undelete", "--list", d.M("")), d.M("f"))
	})
	d.Stop()
	d.Env = []string{"CASCADEFS_FAILPOINTS=undelete-before-forget=kill"}
	d.Start()
	d.CLI("undelete", d.M("f"))
	if !d.Exited(10 * time.Second) {
		t.Fatal("the daemon was not killed")
	}
	d.Env, d.Args = nil, []string{"--retention", "0"}
	d.Start()
	testenv.WaitFor(t, "the entry resolved", 20*time.Second, func() bool {
		return !strings.Contains(d.MustCLI("undelete", "--list", d.M("")), d.M("f"))
	})
	time.Sleep(3 * time.Second)
	if !objectExists(d, entries[0].Object) {
		t.Fatal("the object of the undeleted file was deleted")
	}
	testenv.DropCaches()
	if sumFile(t, d.M("f")) != want {
		t.Error("the undeleted file reads wrong bytes")
	}
}
