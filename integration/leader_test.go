package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// leader=SIZE: a migrated file keeps its first SIZE bytes on disk. Reads
// there (the small reads of header readers: file, head, thumbnailers)
// raise no event and make no GET; reads past it recall as before; a file
// that fits in the leader is copied but not released (nothing to free).
func TestLeaderBytes(t *testing.T) {
	const mib = 1 << 20
	archives(t, func(t *testing.T, newDaemon func(extra ...string) *testenv.Daemon) {
		d := newDaemon("--leader", "1MiB", "--metrics", "127.0.0.1:0")
		data := make([]byte, 4*mib)
		for i := range data {
			data[i] = byte(i*7 + i>>12)
		}
		if err := os.WriteFile(d.M("big"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		small := data[:mib/2]
		if err := os.WriteFile(d.M("small"), small, 0o644); err != nil {
			t.Fatal(err)
		}
		d.MustCLI("migrate", d.M("big"), d.M("small"))

		big := state(t, d, "big")
		if big.State != "migrated" || big.Leader != mib || big.ResidentBytes != mib {
			t.Fatalf("big after migrate: %+v, want migrated with a 1 MiB leader", big)
		}
		if s := state(t, d, "small"); s.State != "premigrated" || s.ResidentBytes != mib/2 {
			t.Fatalf("small after migrate: %+v, want premigrated (it fits in the leader)", s)
		}

		// Header reads: small reads inside the first quarter of the
		// leader, so that the kernel's readahead stays inside it too.
		testenv.DropCaches()
		f, err := os.Open(d.M("big"))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []struct{ off, n int }{{0, 4096}, {0, 16 << 10}, {200 << 10, 8 << 10}, {100, 300}} {
			buf := make([]byte, r.n)
			if _, err := f.ReadAt(buf, int64(r.off)); err != nil {
				t.Fatalf("read %d bytes at %d: %v", r.n, r.off, err)
			}
			if !bytes.Equal(buf, data[r.off:r.off+r.n]) {
				t.Fatalf("read %d bytes at %d: wrong bytes", r.n, r.off)
			}
		}
		f.Close()
		if got, err := os.ReadFile(d.M("small")); err != nil || !bytes.Equal(got, small) {
			t.Fatalf("small reads back wrong: %v", err)
		}
		m := scrape(t, d.Log())
		if n := m[`cascadefs_recall_seconds_count{fs="t1"}`]; n != 0 {
			t.Errorf("reads inside the leader raised %v READ events", n)
		}
		if n := m[`cascadefs_recalled_bytes_total{fs="t1"}`]; n != 0 {
			t.Errorf("reads inside the leader recalled %v bytes", n)
		}
		if s := state(t, d, "big"); s.State != "migrated" || s.ResidentBytes != mib {
			t.Errorf("big after header reads: %+v", s)
		}

		// Past the leader: recalled as before, right bytes.
		testenv.DropCaches()
		if got, err := os.ReadFile(d.M("big")); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("big reads back wrong: %v", err)
		}
		settled := stateAfterRead(t, d, "big") // the recall's writes and commit come after the reader
		m = scrape(t, d.Log())
		if m[`cascadefs_recall_seconds_count{fs="t1"}`] == 0 || m[`cascadefs_recalled_bytes_total{fs="t1"}`] < 3*mib {
			t.Errorf("a read past the leader recalled nothing: %v events, %v bytes",
				m[`cascadefs_recall_seconds_count{fs="t1"}`], m[`cascadefs_recalled_bytes_total{fs="t1"}`])
		}
		if s := settled; s.State != "premigrated" {
			t.Errorf("big after a full read: %+v, want premigrated", s)
		}
		// Released again, it keeps its leader again.
		d.MustCLI("migrate", d.M("big"))
		if s := state(t, d, "big"); s.State != "migrated" || s.Leader != mib {
			t.Errorf("big migrated again: %+v", s)
		}
	})
}

// A crash inside or just before the punch of a release that keeps a
// leader: after the restart the file is migrated, its leader still on
// disk, and it reads back right (the punched part recalled, the rest
// found local).
func TestLeaderKeptAcrossCrashInPunch(t *testing.T) {
	for _, point := range []string{failpoint.MigrateBeforePunch, failpoint.MigrateInsidePunch} {
		t.Run(point, func(t *testing.T) {
			d := testenv.NewDaemon(t, "", []string{"CASCADEFS_FAILPOINTS=" + point + "=kill@1"}, "--leader", "1MiB")
			d.Start()
			want := writeRandom(t, d.M("f"), 8<<20)
			if _, _, err := d.CLI("migrate", d.M("f")); err == nil {
				t.Fatal("migrate finished: the failpoint did not kill the daemon")
			}
			if !d.Exited(10 * time.Second) {
				t.Fatal("daemon still running after its failpoint")
			}
			d.Env = nil
			d.Start()
			if s := state(t, d, "f"); s.State != "migrated" || s.Leader < 1<<20 {
				t.Fatalf("after the crash: %+v, want migrated with its 1 MiB leader", s)
			}
			testenv.DropCaches()
			if sumFile(t, d.M("f")) != want {
				t.Fatal("wrong bytes after the crash")
			}
			// Released again, it keeps exactly its leader.
			d.MustCLI("migrate", d.M("f"))
			if s := state(t, d, "f"); s.State != "migrated" || s.Leader != 1<<20 || s.ResidentBytes != 1<<20 {
				t.Fatalf("migrated again: %+v", s)
			}
		})
	}
}

// In a cluster, `fs set leader=` applies to the running session without
// a restart, as the space monitor's settings do.
func TestLeaderSetWithoutRestart(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1")
	c.Start("n1")
	n1 := c.Nodes["n1"]
	leaderOf := func(rel string) int64 {
		t.Helper()
		var entries []daemon.Entry
		out := c.MustCLI("ls", "--json", n1.M(rel))
		if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 1 || entries[0].State != "migrated" {
			t.Fatalf("ls: %v %s", err, out)
		}
		return entries[0].Leader
	}
	writeRandom(t, n1.M("a"), 4<<20)
	c.MustCLI("migrate", n1.M("a"))
	if l := leaderOf("a"); l != 0 {
		t.Fatalf("leader %d before the setting", l)
	}
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "leader=1MiB")
	want := writeRandom(t, n1.M("b"), 4<<20)
	testenv.WaitFor(t, "the new leader to apply", 20*time.Second, func() bool {
		c.MustCLI("migrate", n1.M("b"))
		if leaderOf("b") == 1<<20 {
			return true
		}
		c.MustCLI("recall", n1.M("b")) // premigrated again, for the next try
		return false
	})
	testenv.DropCaches()
	if sumFile(t, n1.M("b")) != want {
		t.Fatal("wrong bytes")
	}
}
