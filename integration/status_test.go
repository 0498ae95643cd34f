package integration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// Every node of the host is asked at once, each for at most two seconds:
// with the owner stopped (SIGSTOP), status answers in time, names what
// did not answer, and exits 1 (unhealthy); once the cluster is whole
// again, it exits 0. Before, it waited on each daemon in turn (15 s).
func TestStatusAnswersWhileANodeIsStopped(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	if out, errOut, err := c.CLI("status"); err != nil {
		t.Fatalf("status of a healthy cluster failed: %v\n%s%s", err, out, errOut)
	}
	n1 := c.Nodes["n1"]
	n1.Pause()
	resumed := false
	defer func() {
		if !resumed {
			n1.Resume()
		}
	}()
	for _, args := range [][]string{{"status"}, {"status", "--json"}} {
		start := time.Now()
		out, errOut, err := c.CLI(args...)
		took := time.Since(start)
		if took > 3*time.Second {
			t.Errorf("%v took %v with a node stopped", args, took)
		}
		if err == nil {
			t.Errorf("%v exited 0 with a node stopped:\n%s", args, out)
		}
		if !strings.Contains(errOut, "did not answer") {
			t.Errorf("%v does not say what did not answer:\n%s%s", args, out, errOut)
		}
	}
	n1.Resume()
	resumed = true
	testenv.WaitFor(t, "a healthy status again", 45*time.Second, func() bool { _, _, err := c.CLI("status"); return err == nil })
}

// Another instance on the host (a daemon of another run directory) does
// not change what the admin commands of this one see or do, even with
// the same filesystem name, even stopped. Before, a command on a path in
// the other instance's mount went to this instance's daemon of the same
// name, which migrated its own file of that relative path; and status
// listed the other mount as one of this instance's.
func TestOtherInstancesDoNotMatter(t *testing.T) {
	other, d := testenv.NewDaemon(t, "", nil), testenv.NewDaemon(t, "", nil)
	other.Start()
	d.Start()
	writeRandom(t, other.M("f"), 1<<20)
	writeRandom(t, d.M("f"), 1<<20)

	// A path in the other mount, asked through this run directory.
	_, errOut, err := d.CLI("migrate", other.M("f"))
	if err == nil || !strings.Contains(errOut, "another run directory") {
		t.Errorf("migrate of the other instance's file through this one: %v %q", err, errOut)
	}
	for _, dm := range []*testenv.Daemon{d, other} {
		if out := dm.MustCLI("ls", dm.M("f")); !strings.Contains(out, "resident") {
			t.Errorf("a migrate refused changed %s:\n%s", dm.M("f"), out)
		}
	}

	// The other instance stopped: this one's commands answer as before.
	other.Pause()
	defer other.Resume()
	start := time.Now()
	out := d.MustCLI("status", "--json")
	var rep struct {
		Mounts []struct{ Mountpoint string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Mounts) != 1 || rep.Mounts[0].Mountpoint != d.Mountpoint {
		t.Errorf("status lists %+v (%v), want only %s", rep.Mounts, err, d.Mountpoint)
	}
	d.MustCLI("df")
	d.MustCLI("migrate", d.M("f"))
	if out := d.MustCLI("ls", d.M("f")); !strings.Contains(out, "migrated") {
		t.Errorf("after migrate:\n%s", out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("commands took %v with another instance stopped", took)
	}
}
