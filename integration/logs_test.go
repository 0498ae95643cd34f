package integration

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// jsonLines checks that every line of a daemon's log is one JSON object
// with a time, a level and a message, and returns the messages.
func jsonLines(t *testing.T, log string) []string {
	t.Helper()
	var msgs []string
	for i, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line %d is not JSON (%v): %s", i+1, err, line)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("line %d has no %q: %s", i+1, k, line)
			}
		}
		msgs = append(msgs, rec["msg"].(string))
	}
	return msgs
}

// --log-format json: every line a mount and a node write is a JSON
// object, the lines of the libraries they use too (go-fuse's --debug
// lines through the standard log package, Serf's and memberlist's).
func TestLogFormatJSON(t *testing.T) {
	t.Run("mount", func(t *testing.T) {
		d := testenv.NewDaemon(t, "", nil, "--log-format", "json", "--log-level", "debug", "--debug")
		d.Start()
		want := writeRandom(t, d.M("f"), 3<<20)
		d.MustCLI("migrate", d.M("f"))
		testenv.DropCaches()
		if sumFile(t, d.M("f")) != want {
			t.Fatal("read back wrong bytes")
		}
		// The reader is served before the last chunks are written: the
		// recall's commit comes after it.
		testenv.WaitFor(t, "the recall's commit", 20*time.Second, func() bool { return slices.Contains(jsonLines(t, d.Log()), "recalled") })
		d.Stop()
		msgs := jsonLines(t, d.Log())
		for _, m := range []string{"recalled", "recall stream", "signal received; unmounting"} {
			if !slices.Contains(msgs, m) {
				t.Errorf("no %q line in the log:\n%s", m, d.Log())
			}
		}
		if !strings.Contains(d.Log(), "LOOKUP") { // a go-fuse debug line, as JSON
			t.Errorf("no go-fuse debug lines in the log")
		}
	})
	t.Run("node", func(t *testing.T) {
		c := testenv.NewCluster(t, "", nil, "n1")
		c.Nodes["n1"].Args = []string{"--log-format", "json"}
		c.Start("n1")
		if err := os.WriteFile(c.Nodes["n1"].M("g"), []byte("bytes"), 0o644); err != nil {
			t.Fatal(err)
		}
		c.Nodes["n1"].Stop()
		msgs := jsonLines(t, c.Nodes["n1"].Log())
		if !slices.Contains(msgs, "node started") {
			t.Errorf("no \"node started\" line:\n%s", c.Nodes["n1"].Log())
		}
	})
	t.Run("refused", func(t *testing.T) {
		d := testenv.NewDaemon(t, "", nil)
		_, stderr, err := d.CLI("mount", "--log-format", "xml", "--backing", d.Backing, "--archive", d.Archive, d.Mountpoint)
		if err == nil || !strings.Contains(stderr, "want text or json") {
			t.Fatalf("a bad --log-format: err %v, stderr %q", err, stderr)
		}
		_, stderr, err = d.CLI("mount", "--log-level", "loud", "--backing", d.Backing, "--archive", d.Archive, d.Mountpoint)
		if err == nil || !strings.Contains(stderr, "want debug, info, warn or error") {
			t.Fatalf("a bad --log-level: err %v, stderr %q", err, stderr)
		}
	})
}
