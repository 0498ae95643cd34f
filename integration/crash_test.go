package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// kill -9 at several moments of a migration and of a recall: after a
// restart every file is resident, premigrated or migrated, and reads back
// with its bytes.
func TestKill9DuringMigrationAndRecall(t *testing.T) {
	archives(t, func(t *testing.T, newDaemon func(...string) *testenv.Daemon) {
		d := newDaemon("--small-file", "1048576")
		want := map[string][32]byte{}
		content := map[string][]byte{}
		for i := range 6 {
			name := fmt.Sprintf("f%d", i)
			want[name] = writeRandom(t, d.M(name), int64(8<<20+i*4099))
			content[name], _ = os.ReadFile(d.B(name))
		}
		check := func(phase string) {
			t.Helper()
			for name, sum := range want {
				e := state(t, d, name)
				switch e.State {
				case "resident", "premigrated", "migrated":
				default:
					t.Fatalf("%s: %s left in state %+v", phase, name, e)
				}
				if got := sumFile(t, d.M(name)); got != sum {
					t.Fatalf("%s: %s read back wrong bytes (state %s)", phase, name, e.State)
				}
			}
		}
		for i, delay := range []time.Duration{5 * time.Millisecond, 30 * time.Millisecond, 80 * time.Millisecond} {
			go d.CLI("migrate", "-j", "3", d.Mountpoint+"/f0", d.Mountpoint+"/f1", d.Mountpoint+"/f2",
				d.Mountpoint+"/f3", d.Mountpoint+"/f4", d.Mountpoint+"/f5")
			time.Sleep(delay)
			d.Kill9()
			d.Start()
			testenv.DropCaches()
			check(fmt.Sprintf("migration kill %d", i))
			// Now migrate all and kill during the recall by concurrent readers.
			d.MustCLI("migrate", "-r", d.Mountpoint)
			testenv.DropCaches()
			var wg sync.WaitGroup
			for name := range want {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Readers of the dead mount get errors, never wrong
					// bytes: what they got before the error is right too.
					got, err := os.ReadFile(d.M(name))
					if err == nil && !bytes.Equal(got, content[name]) || !bytes.HasPrefix(content[name], got) {
						t.Errorf("recall kill %d: a reader of %s got %d wrong bytes (err %v)", i, name, len(got), err)
					}
				}()
			}
			time.Sleep(delay)
			d.Kill9()
			wg.Wait()
			d.Start()
			testenv.DropCaches()
			check(fmt.Sprintf("recall kill %d", i))
		}
		// No object leaks: once the destroy queue is done, the archive holds
		// exactly the objects that files point to.
		checkNoLeak(t, d)
	})
}

// checkNoLeak waits for the destroy queue to drain, then compares the
// archive's objects with those the files' records point to.
func checkNoLeak(t *testing.T, d *testenv.Daemon) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var rep struct{ Mounts []daemon.Status }
		json.Unmarshal([]byte(d.MustCLI("status", "--json")), &rep)
		if len(rep.Mounts) == 1 && rep.Mounts[0].PendingDestroy == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("destroy queue not empty after 60s: %+v", rep.Mounts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var used []string
	for _, e := range ls(t, d, d.Mountpoint) {
		if e.Object != "" {
			used = append(used, e.Object)
		}
	}
	sort.Strings(used)
	if got := d.ArchiveObjects(t); !slices.Equal(got, used) {
		t.Fatalf("archive objects %v, files point to %v", got, used)
	}
}

// A mount taken away from outside (umount -l by an admin) ends the daemon
// at once, cleanly; a new daemon mounts again.
func TestUnmountedFromOutside(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	if err := syscall.Unmount(d.Mountpoint, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if !d.Exited(3 * time.Second) { // it used to retry the unmount for 5s
		t.Fatal("daemon still running 3s after its mount was taken away")
	}
	if !strings.Contains(d.Log(), "unmounted from outside") {
		t.Fatalf("log does not say why it stopped:\n%s", d.Log())
	}
	d.Start()
	os.WriteFile(d.M("a"), []byte("a"), 0o644)
	d.MustCLI("migrate", d.M("a"))
}

func TestAdminCommandErrors(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	os.Mkdir(d.M("dir"), 0o755)
	os.WriteFile(d.M("dir/a"), []byte("a"), 0o644)
	cases := [][]string{
		{"migrate", "/tmp"},
		{"migrate", d.M("missing")},
		{"migrate", d.M("dir")},
		{"migrate", d.M("dir/a"), d.M("missing")}, // one bad path: nothing is done
		{"recall", d.M("dir")},
		{"ls", d.M("nope")},
		{"bogus"},
	}
	for _, c := range cases {
		o, e, err := d.CLI(c...)
		if err == nil {
			t.Errorf("%v succeeded: %s", c, o)
		}
		if lines := strings.Count(strings.TrimSpace(e), "\n") + 1; strings.TrimSpace(e) == "" || (c[0] != "bogus" && lines != 1) {
			t.Errorf("%v: want one line on stderr, got %q", c, e)
		}
	}
	if e := state(t, d, "dir/a"); e.State != "resident" {
		t.Fatalf("a failed command changed a file: %+v", e)
	}
	// An unreachable archive stops the mount with one clear line.
	d2 := testenv.NewDaemon(t, "s3://bucket?endpoint=127.0.0.1:1&insecure=true", []string{"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y"})
	_, e, err := d2.CLI("mount", "--backing", d2.Backing, "--archive", d2.Archive, d2.Mountpoint)
	if err == nil || !strings.Contains(e, "archive") {
		t.Fatalf("mount with an unreachable archive: %v %q", err, e)
	}
	// Space settings that make no sense are refused before anything is mounted.
	os.MkdirAll(d2.Dir+"/archive", 0o755)
	for flags, why := range map[string]string{"--quota=-5": "quota=-5", "--high=40 --low=50": "low=50 must be under high=40", "--exclude=[": "glob"} {
		args := append([]string{"mount", "--backing", d2.Backing, "--archive", "file://" + d2.Dir + "/archive"}, strings.Fields(flags)...)
		if _, e, err := d2.CLI(append(args, d2.Mountpoint)...); err == nil || !strings.Contains(e, why) {
			t.Fatalf("mount %s: %v %q, want %q", flags, err, e, why)
		}
	}
	for _, args := range [][]string{{"mount", d2.Mountpoint}, {"mount", "--backing", "/nonexistent", "--archive", "file:///tmp/x", d2.Mountpoint}} {
		if _, e, err := d2.CLI(args...); err == nil || e == "" {
			t.Fatalf("mount %v: accepted", args)
		}
	}
	// status names the mount, its session and its space.
	if out := d.MustCLI("status"); !strings.Contains(out, "t1 on "+d.Mountpoint) || !strings.Contains(out, "of the backing filesystem's") {
		t.Fatalf("status: %s", out)
	}
}
