package integration

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/scrub"
	"github.com/cascadefs/cascadefs/seal"
)

// copyStats reads the archive copies' counts from status.
func copyStats(t *testing.T, d *testenv.Daemon) (faults, repaired int64) {
	t.Helper()
	var rep struct{ Mounts []daemon.Status }
	if err := json.Unmarshal([]byte(d.MustCLI("status", "--json")), &rep); err != nil || len(rep.Mounts) != 1 {
		t.Fatalf("status: %v %+v", err, rep)
	}
	c := rep.Mounts[0].Copies
	if c == nil || c.Copies != 2 {
		t.Fatalf("status shows no two archive copies: %+v", rep.Mounts[0].SessionInfo)
	}
	return c.Faults, c.Repaired
}

// twoCopies starts a daemon whose archive has two copies: the directory
// dir first, then the MinIO bucket s3.
func twoCopies(t *testing.T) (d *testenv.Daemon, dir, s3 string, m *testenv.MinIO) {
	m = testenv.StartMinIO(t)
	s3 = m.Bucket(t, "copy2")
	dir = t.TempDir()
	d = testenv.NewDaemon(t, "file://"+dir, m.EnvList(), "--archive", s3)
	d.Start()
	return d, dir, s3, m
}

// flipByte changes one bit of the byte at off of the file p.
func flipByte(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// Two copies, one in a directory and one on MinIO: every object is in
// both; a recall whose first copy lacks the object, or has a flipped byte,
// reads the second, says so, and writes the first copy again; a stub
// whose copies are both bad reads EIO; deleting a stub deletes both.
func TestArchiveCopies(t *testing.T) {
	d, dir, s3, m := twoCopies(t)
	sums := map[string][32]byte{}
	for n, size := range map[string]int64{"flipped": 3<<20 + 5, "missing": 1 << 20, "both": 5000} {
		sums[n] = writeRandom(t, d.M(n), size)
	}
	d.MustCLI("migrate", d.M("flipped"), d.M("missing"), d.M("both"))
	keys := map[string]string{}
	for n := range sums {
		keys[n] = state(t, d, n).Object
		if _, err := os.Stat(filepath.Join(dir, keys[n])); err != nil {
			t.Fatalf("%s: not in the first copy: %v", n, err)
		}
	}
	onS3 := testenv.ArchiveObjects(t, s3, m.EnvList())
	for n, k := range keys {
		if !contains(onS3, k) {
			t.Fatalf("%s: not in the second copy (%v)", n, onS3)
		}
	}

	flipByte(t, filepath.Join(dir, keys["flipped"]), 300<<10) // in the second chunk
	must(t, os.Remove(filepath.Join(dir, keys["missing"])))
	must(t, os.Remove(filepath.Join(dir, keys["both"])))
	testenv.DeleteObject(t, s3, m.EnvList(), keys["both"])
	testenv.DropCaches()

	for _, n := range []string{"flipped", "missing"} {
		if sumFile(t, d.M(n)) != sums[n] {
			t.Fatalf("%s: wrong bytes with a good second copy", n)
		}
	}
	if _, err := os.ReadFile(d.M("both")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("both copies gone: read gave %v, want EIO", err)
	}
	if !strings.Contains(d.Log(), "reading the next copy") {
		t.Error("the move to the second copy is not in the log")
	}
	testenv.WaitFor(t, "both bad copies repaired", 20*time.Second, func() bool {
		_, repaired := copyStats(t, d)
		return repaired == 2
	})
	if faults, _ := copyStats(t, d); faults < 3 {
		t.Errorf("faults counted: %d, want at least 3", faults)
	}
	for _, n := range []string{"flipped", "missing"} {
		b, err := os.ReadFile(filepath.Join(dir, keys[n]))
		if err != nil || sha256.Sum256(b) != sums[n] {
			t.Errorf("%s: the first copy was not written again right: %v", n, err)
		}
	}

	// A delete deletes every copy.
	must(t, os.Remove(d.M("missing")))
	testenv.WaitFor(t, "the deleted stub's objects gone from both copies", 20*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(dir, keys["missing"]))
		return errors.Is(err, os.ErrNotExist) && !contains(testenv.ArchiveObjects(t, s3, m.EnvList()), keys["missing"])
	})
}

// A file is premigrated only when every copy took it: with the second
// copy's directory gone (a file in its place), the migration fails, the
// file stays resident, and the first copy's object is not left behind.
func TestEveryCopyBeforeRelease(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	d := testenv.NewDaemon(t, "file://"+first, nil, "--archive", "file://"+second)
	d.Start()
	want := writeRandom(t, d.M("f"), 1<<20)
	must(t, os.RemoveAll(second))
	must(t, os.WriteFile(second, nil, 0o600))
	if _, _, err := d.CLI("migrate", d.M("f")); err == nil {
		t.Fatal("migrated with the second copy's directory gone")
	}
	if e := state(t, d, "f"); e.State != "resident" {
		t.Fatalf("after a failed copy: %+v", e)
	}
	testenv.WaitFor(t, "the first copy's object discarded", 20*time.Second, func() bool {
		return len(testenv.ArchiveObjects(t, "file://"+first, nil)) == 0
	})
	if sumFile(t, d.M("f")) != want {
		t.Fatal("the file's bytes changed")
	}
}

// scrubRun runs `cascadefs scrub --json` with args; the exit status says
// whether bad copies are left.
func scrubRun(t *testing.T, d *testenv.Daemon, args ...string) (rep scrub.Report, clean bool) {
	t.Helper()
	out, errOut, err := d.CLI(append([]string{"scrub", "--json"}, args...)...)
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("scrub %v: %v %v\n%s%s", args, err, jerr, out, errOut)
	}
	return rep, err == nil
}

// Scrub reads every copy back and checks every chunk: it finds a flipped
// byte in one copy and a missing object in the other, repairs both with
// --repair (at a bounded rate), finds nothing the next time, and resumes
// after a given file.
func TestScrubFindsAndRepairsBadCopies(t *testing.T) {
	d, dir, s3, m := twoCopies(t)
	for _, n := range []string{"a", "b", "c", "d"} {
		writeRandom(t, d.M(n), 600<<10)
	}
	d.MustCLI("migrate", d.M("a"), d.M("b"), d.M("c"), d.M("d"))
	flipByte(t, filepath.Join(dir, state(t, d, "a").Object), 500<<10)
	testenv.DeleteObject(t, s3, m.EnvList(), state(t, d, "c").Object)

	rep, clean := scrubRun(t, d, d.M(""))
	if clean || rep.Files != 4 || rep.Objects != 7 || rep.BadCount != 2 || rep.Repaired != 0 || !rep.Complete {
		t.Fatalf("scrub without --repair: clean=%v %+v", clean, rep)
	}
	if rep.Bad[0].Path != "a" || rep.Bad[0].Copy != 1 || rep.Bad[1].Path != "c" || rep.Bad[1].Copy != 2 {
		t.Fatalf("bad copies named: %+v", rep.Bad)
	}
	rep, clean = scrubRun(t, d, "--repair", "--rate", "8MiB", d.M(""))
	if !clean || rep.BadCount != 2 || rep.Repaired != 2 {
		t.Fatalf("scrub --repair: clean=%v %+v", clean, rep)
	}
	rep, clean = scrubRun(t, d, d.M(""))
	if !clean || rep.BadCount != 0 || rep.Objects != 8 {
		t.Fatalf("scrub after the repair: clean=%v %+v", clean, rep)
	}
	rep, _ = scrubRun(t, d, "--after", d.M("b"), d.M(""))
	if rep.Files != 2 {
		t.Fatalf("scrub --after b checked %d files, want 2 (c, d)", rep.Files)
	}
	if st := d.MustCLI("status"); !strings.Contains(st, "last scrub") {
		t.Errorf("status does not show the last scrub:\n%s", st)
	}
}

// scrubState reads the periodic scrub's state from the first copy.
func scrubState(t *testing.T, dir string) (st scrub.State) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, testenv.ScrubPrefix+"t1"))
	if err == nil {
		json.Unmarshal(b, &st)
	}
	return st
}

// The setting scrub-interval makes the owner scrub (and repair) by
// itself; a run cut short by a stop resumes after the last file it
// finished, from the state it keeps in the archive.
func TestPeriodicScrubResumesAndRepairs(t *testing.T) {
	m := testenv.StartMinIO(t)
	s3 := m.Bucket(t, "copy2")
	dir := t.TempDir()
	d := testenv.NewDaemon(t, "file://"+dir, m.EnvList(), "--archive", s3)
	d.Start()
	for _, n := range []string{"a", "b", "c", "d"} {
		writeRandom(t, d.M(n), 600<<10)
	}
	d.MustCLI("migrate", d.M("a"), d.M("b"), d.M("c"), d.M("d"))
	key := state(t, d, "d").Object
	d.Stop()
	flipByte(t, filepath.Join(dir, key), 100)

	// Slow: a file's two copies take about 12 s.
	d.Args = append(d.Args, "--scrub-interval", "1m", "--scrub-rate", "100KiB")
	d.Start()
	testenv.WaitFor(t, "the periodic scrub past its first file", 60*time.Second, func() bool {
		return scrubState(t, dir).After != ""
	})
	d.Stop()
	cut := scrubState(t, dir)
	if !cut.Finished.IsZero() || cut.After == "d" {
		t.Fatalf("the run was not cut short: %+v", cut)
	}

	d.Args = append(d.Args[:len(d.Args)-4], "--scrub-interval", "1m", "--scrub-rate", "0")
	d.Start()
	testenv.WaitFor(t, "the resumed scrub complete", 60*time.Second, func() bool {
		return !scrubState(t, dir).Finished.IsZero()
	})
	var rep struct{ Mounts []daemon.Status }
	json.Unmarshal([]byte(d.MustCLI("status", "--json")), &rep)
	last := rep.Mounts[0].LastScrub
	if last == nil || !last.Complete || last.Files >= 4 || last.Repaired != 1 {
		t.Fatalf("the resumed run (after %q): %+v", cut.After, last)
	}
	b, _ := os.ReadFile(filepath.Join(dir, key))
	if sha256.Sum256(b) != sumFile(t, d.M("d")) {
		t.Fatal("the flipped copy was not repaired")
	}
}

// A copy added to a cluster's filesystem with fs set --archive: the owner
// restarts its session with both copies, scrub --repair asked through
// another node fills the new copy, and a new first copy that is not a
// copy yet is refused. A key file set the same way seals later uploads.
func TestClusterAddsACopy(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	want := writeRandom(t, n1.M("f"), 700<<10)
	c.MustCLI("migrate", n1.M("f"))
	second := filepath.Join(c.Dir, "second")
	if _, errOut, err := c.CLI("fs", "set", "--repo", c.Repo, testenv.FSName, "--archive", "file://"+second); err == nil ||
		!strings.Contains(errOut, "not a copy yet") {
		t.Fatalf("a new first copy that holds nothing was taken: %v %s", err, errOut)
	}
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "--archive", c.Archive, "--archive", "file://"+second)
	var rep scrub.Report
	testenv.WaitFor(t, "the owner's session with both copies", 30*time.Second, func() bool {
		out, _, _ := c.CLI("scrub", "--json", n2.M("f"))
		return json.Unmarshal([]byte(out), &rep) == nil && rep.BadCount > 0
	})
	if rep.BadCount != 1 || rep.Bad[0].Copy != 2 || !strings.Contains(rep.Bad[0].Problem, "not found") {
		t.Fatalf("scrub through n2 of a file only in the first copy: %+v", rep)
	}
	c.MustCLI("scrub", "--repair", n2.M("f"))
	out := c.MustCLI("scrub", "--json", n2.M("f"))
	if json.Unmarshal([]byte(out), &rep) != nil || rep.BadCount != 0 {
		t.Fatalf("scrub after the repair: %s", out)
	}
	if got := testenv.ArchiveObjects(t, "file://"+second, nil); len(got) != 1 {
		t.Fatalf("the second copy holds %v", got)
	}
	c.MustCLI("migrate", n1.M("f"))
	if sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes after the copy was added")
	}

	// A key file set on the running cluster: the owner's session starts
	// again with it, so later uploads are sealed; the file uploaded in
	// the clear still reads.
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "encryption-key-file="+keyFile(t, seal.NewKey()))
	var wantG [32]byte
	testenv.WaitFor(t, "an upload sealed after fs set encryption-key-file", 30*time.Second, func() bool {
		wantG = writeRandom(t, n1.M("g"), 300<<10)
		_, _, err := c.CLI("migrate", n1.M("g"))
		return err == nil && keyOf(t, c.B("g")) != ""
	})
	c.MustCLI("migrate", n1.M("f"))
	if sumFile(t, n2.M("g")) != wantG || sumFile(t, n2.M("f")) != want {
		t.Fatal("wrong bytes after the key file was set")
	}
}

// One copy on MinIO and one on versitygw (its POSIX backend): an object
// deleted from the first reads from the second and is repaired; a byte
// flipped in the second's file is found by scrub and repaired from the
// first.
func TestCopiesOnMinIOAndVersitygw(t *testing.T) {
	m := testenv.StartS3(t, "minio")
	v := testenv.StartS3(t, "versitygw")
	first, second := m.Bucket(t, "first"), v.Bucket(t, "second")
	d := testenv.NewDaemon(t, first, m.EnvList(), "--archive", second) // the same test credentials on both
	d.Start()
	wantA := writeRandom(t, d.M("a"), 700<<10)
	writeRandom(t, d.M("b"), 700<<10)
	d.MustCLI("migrate", d.M("a"), d.M("b"))
	keyA, keyB := state(t, d, "a").Object, state(t, d, "b").Object
	for _, k := range []string{keyA, keyB} {
		if !contains(testenv.ArchiveObjects(t, second, v.EnvList()), k) {
			t.Fatalf("%s is not on versitygw", k)
		}
	}
	testenv.DeleteObject(t, first, m.EnvList(), keyA)
	testenv.DropCaches()
	if sumFile(t, d.M("a")) != wantA {
		t.Fatal("wrong bytes from the versitygw copy")
	}
	testenv.WaitFor(t, "the MinIO copy repaired", 20*time.Second, func() bool {
		return contains(testenv.ArchiveObjects(t, first, m.EnvList()), keyA)
	})
	flipByte(t, filepath.Join(v.Data, "second", keyB), 300<<10)
	rep, clean := scrubRun(t, d, d.M(""))
	if clean || rep.BadCount != 1 || rep.Bad[0].Copy != 2 || rep.Bad[0].Path != "b" {
		t.Fatalf("scrub with a flipped byte on versitygw: clean=%v %+v", clean, rep)
	}
	if rep, clean = scrubRun(t, d, "--repair", d.M("")); !clean || rep.Repaired != 1 {
		t.Fatalf("scrub --repair: clean=%v %+v", clean, rep)
	}
	if rep, clean = scrubRun(t, d, d.M("")); !clean || rep.BadCount != 0 {
		t.Fatalf("scrub after the repair: clean=%v %+v", clean, rep)
	}
}

// Killed while a migration's upload has reached the first copy only, or
// while a repair has written a bad copy's object again but not yet its
// checksums and description: after a restart nothing is left behind, the
// file reads right, and a scrub with repair mends the half-repaired copy.
func TestKill9DuringCopyWork(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	d := testenv.NewDaemon(t, "file://"+first, nil, "--archive", "file://"+second)
	d.Start()
	killedAt := func(point string, args ...string) {
		t.Helper()
		d.Stop()
		d.Env = []string{"CASCADEFS_FAILPOINTS=" + point + "=kill@1"}
		d.Start()
		if _, _, err := d.CLI(args...); err == nil {
			t.Fatalf("%v went through the kill point %s", args, point)
		}
		if !d.Exited(10 * time.Second) {
			t.Fatalf("the daemon was not killed at %s", point)
		}
		d.Env = nil
		d.Start()
	}

	// The upload: its DESTROY entry takes the object from every copy.
	want := writeRandom(t, d.M("up"), 1<<20)
	killedAt("copy-put-done", "migrate", d.M("up"))
	testenv.WaitFor(t, "the cut upload's object gone from both copies", 20*time.Second, func() bool {
		return len(testenv.ArchiveObjects(t, "file://"+first, nil)) == 0 && len(testenv.ArchiveObjects(t, "file://"+second, nil)) == 0
	})
	if e := state(t, d, "up"); e.State != "resident" || sumFile(t, d.M("up")) != want {
		t.Fatalf("after the cut upload: %+v", e)
	}
	d.MustCLI("migrate", d.M("up"))
	key := state(t, d, "up").Object
	for _, dir := range []string{first, second} {
		if !contains(testenv.ArchiveObjects(t, "file://"+dir, nil), key) {
			t.Fatalf("%s: the upload after the restart is missing", dir)
		}
	}

	// The repair: a file with a checksum object (more than 256 chunks).
	wantBig := writeRandom(t, d.M("big"), 64<<20+1)
	d.MustCLI("migrate", d.M("big"))
	big := state(t, d, "big").Object
	for _, k := range []string{big, big + ".sums", big + ".meta"} {
		must(t, os.Remove(filepath.Join(second, k)))
	}
	killedAt("repair-after-data", "scrub", "--repair", d.M("big"))
	if _, err := os.Stat(filepath.Join(second, big)); err != nil {
		t.Fatalf("the kill came before the repair wrote the object: %v", err)
	}
	if _, err := os.Stat(filepath.Join(second, big+".sums")); err == nil {
		t.Fatal("the kill came after the repair wrote the checksums")
	}
	if _, clean := scrubRun(t, d, d.M("big")); clean {
		t.Fatal("a copy without its checksum object scrubs clean")
	}
	if rep, _ := scrubRun(t, d, "--repair", d.M("big")); rep.Repaired != 1 {
		t.Fatalf("scrub --repair after the kill: %+v", rep)
	}
	if rep, clean := scrubRun(t, d, d.M("big")); !clean {
		t.Fatalf("scrub after the repair: %+v", rep)
	}
	for _, k := range []string{big + ".sums", big + ".meta"} {
		if _, err := os.Stat(filepath.Join(second, k)); err != nil {
			t.Errorf("%s not written by the repair: %v", k, err)
		}
	}
	testenv.DropCaches()
	if sumFile(t, d.M("big")) != wantBig {
		t.Fatal("big reads other bytes")
	}
}
