package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
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
	writeRandom(t, d.M("dir/gone"), 1<<20)
	writeRandom(t, d.M("rewritten"), 300<<10)
	os.WriteFile(d.M("dir/stays"), []byte("kept as it is"), 0o644)
	d.MustCLI("migrate", d.M("dir/gone"), d.M("rewritten"), d.M("dir/stays"))
	key := func(p string) string {
		var entries []struct{ Object string }
		json.Unmarshal([]byte(d.MustCLI("ls", "--json", p)), &entries)
		if len(entries) != 1 || entries[0].Object == "" {
			t.Fatalf("no object for %s", p)
		}
		return entries[0].Object
	}
	goneKey, oldKey := key(d.M("dir/gone")), key(d.M("rewritten"))

	if err := os.Remove(d.M("dir/gone")); err != nil {
		t.Fatal(err)
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
	testenv.WaitFor(t, "two kept versions", 20*time.Second, func() bool { return len(list(d.M(""))) == 2 })
	time.Sleep(3 * time.Second) // a pass or two of the DESTROY queue
	if !objectExists(d, goneKey) || !objectExists(d, oldKey) {
		t.Fatalf("kept copies deleted within the retention: %v %v", objectExists(d, goneKey), objectExists(d, oldKey))
	}
	under := list(d.M("dir"))
	if len(under) != 1 {
		t.Fatalf("under dir: %+v", under)
	}
	g := under[0]
	if g.Path != d.M("dir/gone") || g.Fate != "deleted" || g.Key != goneKey || g.Size != 1<<20 || g.UID != 0 ||
		g.Until.Sub(g.At) != time.Hour || time.Since(g.At) > time.Minute {
		t.Errorf("kept deleted file: %+v", g)
	}
	if r := list(d.M("rewritten")); len(r) != 1 || r[0].Fate != "replaced" || r[0].Key != oldKey || r[0].Size != 300<<10 {
		t.Errorf("kept old version: %+v", r)
	}
	if out := d.MustCLI("undelete", "--list", d.M("")); !strings.Contains(out, "KEPT UNTIL") || !strings.Contains(out, d.M("dir/gone")) {
		t.Errorf("undelete --list:\n%s", out)
	}
	if _, errOut, err := d.CLI("undelete", d.M("dir/gone")); err == nil || !strings.Contains(errOut, "not built yet") {
		t.Errorf("undelete without --list: %v %s", err, errOut)
	}

	// The retention set to 0: what was kept goes.
	d.Stop()
	d.Args = []string{"--retention", "0"}
	d.Start()
	testenv.WaitFor(t, "the kept copies deleted", 20*time.Second, func() bool {
		return !objectExists(d, goneKey) && !objectExists(d, oldKey)
	})
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
// retention of the entries the old one committed.
func TestKeptVersionsOutliveAFailover(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "retention=1h")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	writeRandom(t, n1.M("f"), 512<<10)
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
	waitOwner(t, c, testenv.FSName, func(o string) bool { return o == "n2" })
	time.Sleep(3 * time.Second) // passes of the new owner's DESTROY queue
	if after := c.ArchiveObjects(); len(after) != len(before) {
		t.Fatalf("objects after the takeover: %v, before: %v", after, before)
	}
	if listed(n2) != 1 {
		t.Fatal("the kept version is no longer listed after the takeover")
	}
}
