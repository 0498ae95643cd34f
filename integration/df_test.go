package integration

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// cascadefs df: per filesystem, files and bytes by state, what the archive
// holds, usage against the thresholds; a hard link counts once, a damaged
// record is counted and named, and the walk changes nothing.
func TestDF(t *testing.T) {
	const mib = 1 << 20
	archives(t, func(t *testing.T, newDaemon func(extra ...string) *testenv.Daemon) {
		d := newDaemon("--quota", "100MiB", "--high", "80", "--low", "50", "--interval", "1h")
		writeRandom(t, d.M("resident"), 1*mib)
		writeRandom(t, d.M("pre"), 2*mib)
		writeRandom(t, d.M("m1"), 3*mib)
		writeRandom(t, d.M("m2"), 3*mib+5)
		writeRandom(t, d.M("damaged"), 4096)
		if err := os.Link(d.M("m1"), d.M("m1-link")); err != nil {
			t.Fatal(err)
		}
		d.MustCLI("migrate", "--premigrate", d.M("pre"))
		d.MustCLI("migrate", d.M("m1"), d.M("m2"))
		if err := unix.Setxattr(d.B("damaged"), stub.XattrName, []byte("not a record"), 0); err != nil {
			t.Fatal(err)
		}

		var all []daemon.DF
		if err := json.Unmarshal([]byte(d.MustCLI("df", "--json", d.M("m1"))), &all); err != nil || len(all) != 1 {
			t.Fatalf("df --json: %v %+v", err, all)
		}
		df := all[0]
		type count struct{ files, bytes int64 }
		for name, c := range map[string][2]count{
			"resident":    {{df.Resident.Files, df.Resident.Bytes}, {1, 1 * mib}},
			"premigrated": {{df.Premigrated.Files, df.Premigrated.Bytes}, {1, 2 * mib}},
			"migrated":    {{df.Migrated.Files, df.Migrated.Bytes}, {2, 6*mib + 5}},
		} {
			if c[0] != c[1] {
				t.Errorf("%s: %d files, %d bytes; want %d, %d", name, c[0].files, c[0].bytes, c[1].files, c[1].bytes)
			}
		}
		if df.Migrated.OnDisk > 64<<10 || df.Premigrated.OnDisk < 2*mib { // stubs: their records' blocks only
			t.Errorf("on disk: migrated %d, premigrated %d", df.Migrated.OnDisk, df.Premigrated.OnDisk)
		}
		if df.ArchiveBytes != 8*mib+5 || df.Damaged != 1 {
			t.Errorf("archive bytes %d (want %d), damaged %d (want 1)", df.ArchiveBytes, 8*mib+5, df.Damaged)
		}
		if df.Name != "t1" || df.Quota != 100*mib || df.Capacity != 100*mib || df.High != 80 || df.Low != 50 ||
			df.Usage < 3*mib || df.Usage > 4*mib {
			t.Errorf("space: %+v", df)
		}

		// The table, for all mounted filesystems.
		out := d.MustCLI("df")
		for _, want := range []string{"t1", "100.0 MiB (quota)", "80%", "50%", "1 / 1.0 MiB", "1 / 2.0 MiB", "2 / 6.0 MiB", "8.0 MiB", d.Mountpoint, "1 file(s) with an unreadable stub record"} {
			if !strings.Contains(out, want) {
				t.Errorf("df output lacks %q:\n%s", want, out)
			}
		}
		// Nothing changed: still a stub, not recalled.
		if s := state(t, d, "m2"); s.State != "migrated" || s.ResidentBytes != 0 {
			t.Errorf("m2 after df: %+v", s)
		}
		if _, stderr, err := d.CLI("df", "/"); err == nil || !strings.Contains(stderr, "not") {
			t.Errorf("df of a path outside any mount: err %v, stderr %q", err, stderr)
		}
	})
}
