package integration

import (
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
	waitFor(t, "a healthy status again", 45*time.Second, func() bool { _, _, err := c.CLI("status"); return err == nil })
}
