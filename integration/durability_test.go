package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// The calls the durability check looks at.
var durabilityCalls = []string{"write", "pwrite64", "pwritev", "pwritev2", "copy_file_range", "splice",
	"fsync", "fdatasync", "fsetxattr", "fremovexattr", "fallocate",
	"unlinkat", "unlink", "rename", "renameat", "renameat2", "mkdir", "mkdirat"}

// TestDurableBeforeClaimed records the daemon's system calls across a
// premigrate, a release, a full recall, a partial recall, a rewrite of a
// stub and a removal of one, and checks their order: every record change
// comes after the data it claims was synced, every punch after its record
// was synced, and no archive object goes before the change that made it
// garbage is durable.
func TestDurableBeforeClaimed(t *testing.T) {
	// No passthrough: the daemon serves every write, so the trace sees them.
	d := testenv.NewDaemon(t, "", nil, "--no-passthrough", "--small-file", "1", "--window", "262144")
	d.Start()
	archiveDir := strings.TrimPrefix(d.Archive, "file://")
	tr := testenv.StartTrace(t, d.PID(), durabilityCalls...)

	const size = 8 << 20
	sums := map[string][32]byte{}
	for _, n := range []string{"pre", "full", "part", "rewrite", "gone"} {
		sums[n] = writeRandom(t, d.M(n), size)
	}
	inos := map[string]uint64{} // backing path -> inode, for names removed later too
	for n := range sums {
		var st syscall.Stat_t
		if err := syscall.Stat(d.B(n), &st); err != nil {
			t.Fatal(err)
		}
		inos[d.B(n)] = st.Ino
	}
	d.MustCLI("migrate", "--premigrate", d.M("pre"))
	d.MustCLI("migrate", d.M("pre")) // the release of a premigrated file
	d.MustCLI("migrate", d.M("full"), d.M("part"), d.M("rewrite"), d.M("gone"))
	testenv.DropCaches()

	if got := sumFile(t, d.M("full")); got != sums["full"] { // full recall
		t.Fatal("full: wrong bytes after recall")
	}
	f, err := os.Open(d.M("part")) // partial recall
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rewriteKey := state(t, d, "rewrite").Object
	w, err := os.OpenFile(d.M("rewrite"), os.O_WRONLY, 0) // a rewrite: recalled, then resident
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("new bytes"), 100); err != nil {
		t.Fatal(err)
	}
	w.Close()
	goneKey := state(t, d, "gone").Object
	if err := os.Remove(d.M("gone")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the stale objects deleted", 20*time.Second, func() bool {
		return !objectExists(d, goneKey) && !objectExists(d, rewriteKey) &&
			!objectExists(d, archive.SumsKey(goneKey)) && !objectExists(d, archive.SumsKey(rewriteKey))
	})
	time.Sleep(300 * time.Millisecond) // the tracer writes a call when it returns
	calls := tr.Stop(t)

	c := durability{calls: calls, backing: d.Backing, archive: filepath.Join(archiveDir, "t1"), inos: inos}
	problems := c.check()
	for _, p := range problems {
		t.Error(p)
	}
	// A check that saw none of what it checks proves nothing.
	for rule, min := range map[string]int{"record change": 6, "punch": 4, "archive rename": 5,
		"archive delete": 2, "backing removal": 1} {
		if c.checked[rule] < min {
			t.Errorf("the trace holds %d %s calls, want at least %d: the check proved nothing", c.checked[rule], rule, min)
		}
	}
	if t.Failed() {
		t.Logf("%d calls traced", len(calls))
		if os.Getenv("CASCADEFS_SHOW_TRACE") != "" {
			for _, c := range calls {
				t.Logf("%d-%d %s %v ok=%v %s", c.Start+1, c.End+1, c.Name, c.Paths, c.OK, clip(c.Args))
			}
		}
	}
}

// durability checks the order of traced calls.
type durability struct {
	calls            []testenv.Syscall
	backing, archive string
	inos             map[string]uint64
	checked          map[string]int
}

func (c *durability) check() []string {
	c.checked = map[string]int{}
	var problems []string
	fail := func(call testenv.Syscall, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("line %d %s(%s): %s", call.Start+1, call.Name, clip(call.Args), fmt.Sprintf(format, args...)))
	}
	for _, call := range c.calls {
		if !call.OK || len(call.Paths) == 0 {
			continue
		}
		p := call.Paths[0]
		switch {
		case isRecordChange(call) && c.inBacking(p):
			c.checked["record change"]++
			if w := c.unsynced(p, call.Start, isWrite, isSync); w != nil {
				fail(call, "the data written at line %d was not synced before this record change", w.Start+1)
			}
			// The archive copy a record names is durable: its object renamed
			// into place and the directories on its way synced.
			for _, o := range c.archiveEntries(c.inos[p], call.Start) {
				if !c.syncedAfter(filepath.Dir(o.target), o.call.End, call.Start) {
					fail(call, "the archive entry %s made at line %d was not synced before this record change", o.target, o.call.Start+1)
				}
			}
		case call.Name == "fallocate" && strings.Contains(call.Args, "PUNCH_HOLE") && c.inBacking(p):
			c.checked["punch"]++
			if w := c.unsynced(p, call.Start, isRecordChange, isFsync); w != nil {
				fail(call, "the record written at line %d was not synced (fsync) before this punch", w.Start+1)
			}
		case isRename(call) && c.inArchive(p):
			c.checked["archive rename"]++
			if w := c.unsynced(p, call.Start, isWrite, isSync); w != nil {
				fail(call, "the object's bytes written at line %d were not synced before its rename", w.Start+1)
			}
		case isRemoval(call) && c.inBacking(p) && c.inos[p] != 0:
			c.checked["backing removal"]++
		case isRemoval(call) && c.inArchive(p) && !strings.Contains(filepath.Base(p), ".put-"):
			c.checked["archive delete"]++
			problems = append(problems, c.checkDelete(call, p)...)
		}
	}
	return problems
}

// checkDelete: an object goes only once the change that made it garbage
// (a removed name, a removed record) is durable, and the delete is synced.
func (c *durability) checkDelete(del testenv.Syscall, object string) []string {
	var problems []string
	ino := inoOfObject(c.archive, object)
	for _, call := range c.calls {
		if !call.OK || call.End >= del.Start || len(call.Paths) == 0 {
			continue
		}
		p := call.Paths[0]
		switch {
		case (isRemoval(call) || isRename(call)) && c.inBacking(p) && c.inos[p] == ino:
			if !c.syncedAfter(filepath.Dir(p), call.End, del.Start) {
				problems = append(problems, fmt.Sprintf("line %d: object %s deleted before the removal of %s (line %d) was synced in its directory",
					del.Start+1, object, p, call.Start+1))
			}
		case call.Name == "fremovexattr" && isRecordChange(call) && c.inBacking(p) && c.inos[p] == ino:
			if !c.syncedAfter(p, call.End, del.Start) {
				problems = append(problems, fmt.Sprintf("line %d: object %s deleted before the removal of the record of %s (line %d) was synced",
					del.Start+1, object, p, call.Start+1))
			}
		}
	}
	if !c.syncedAfter(filepath.Dir(object), del.End, 1<<62) {
		problems = append(problems, fmt.Sprintf("line %d: the delete of %s was never synced in its directory", del.Start+1, object))
	}
	return problems
}

// unsynced returns the last call that dirtied p (by dirties) before line
// at and was not followed by a completed sync of p (by syncs) that began
// after it ended, or nil.
func (c *durability) unsynced(p string, at int, dirties, syncs func(testenv.Syscall) bool) *testenv.Syscall {
	var last *testenv.Syscall
	syncStart := -1
	for i := range c.calls {
		call := &c.calls[i]
		if call.Start >= at || !call.OK || len(call.Paths) == 0 {
			continue
		}
		if dirties(*call) && writtenPath(*call) == p && (last == nil || call.End > last.End) {
			last = call
		}
		if syncs(*call) && call.Paths[0] == p && call.End < at {
			syncStart = max(syncStart, call.Start)
		}
	}
	if last != nil && last.End >= syncStart {
		return last
	}
	return nil
}

// syncedAfter: an fsync of p began after line from and ended before to.
func (c *durability) syncedAfter(p string, from, to int) bool {
	for _, call := range c.calls {
		if call.OK && isSync(call) && len(call.Paths) > 0 && call.Paths[0] == p && call.Start > from && call.End < to {
			return true
		}
	}
	return false
}

type archiveEntry struct {
	call   testenv.Syscall
	target string
}

// archiveEntries lists the renames and mkdirs in the archive directory of
// the objects of inode ino done before line at.
func (c *durability) archiveEntries(ino uint64, at int) []archiveEntry {
	dir := filepath.Join(c.archive, fmt.Sprint(ino))
	var out []archiveEntry
	for _, call := range c.calls {
		if !call.OK || call.End >= at || len(call.Paths) == 0 {
			continue
		}
		target := call.Paths[len(call.Paths)-1]
		if (isRename(call) && filepath.Dir(target) == dir) || (strings.HasPrefix(call.Name, "mkdir") && target == dir) {
			out = append(out, archiveEntry{call, target})
		}
	}
	return out
}

func inoOfObject(archive, object string) uint64 {
	rel, _ := filepath.Rel(archive, object)
	var ino uint64
	fmt.Sscan(strings.Split(rel, "/")[0], &ino)
	return ino
}

func (c *durability) inBacking(p string) bool { return strings.HasPrefix(p, c.backing+"/") }
func (c *durability) inArchive(p string) bool { return strings.HasPrefix(p, c.archive+"/") }

func isRecordChange(c testenv.Syscall) bool {
	return (c.Name == "fsetxattr" || c.Name == "fremovexattr") && strings.Contains(c.Args, `"user.cascadefs.stub"`)
}

func isWrite(c testenv.Syscall) bool {
	switch c.Name {
	case "write", "pwrite64", "pwritev", "pwritev2", "copy_file_range", "splice":
		return true
	}
	return false
}

// writtenPath is the file a call writes to: the output of splice and
// copy_file_range, else the first.
func writtenPath(c testenv.Syscall) string {
	if c.Name == "splice" || c.Name == "copy_file_range" {
		return c.Paths[len(c.Paths)-1]
	}
	return c.Paths[0]
}

func isSync(c testenv.Syscall) bool  { return c.Name == "fsync" || c.Name == "fdatasync" }
func isFsync(c testenv.Syscall) bool { return c.Name == "fsync" }
func isRename(c testenv.Syscall) bool {
	return c.Name == "rename" || c.Name == "renameat" || c.Name == "renameat2"
}
func isRemoval(c testenv.Syscall) bool { return c.Name == "unlink" || c.Name == "unlinkat" }

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
