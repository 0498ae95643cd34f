package integration

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// Handles the kernel serves by passthrough outlive a kill -9 of the
// daemon that opened them: they read and write the backing file without
// asking anyone. The read shield they hold must outlive the daemon too,
// or a restarted daemon, seeing no opens, releases the file under them.
// Before, a reader then read zeros, and a writer wrote into the stub's
// holes, overwritten by the next recall.

// A reader of a premigrated file, opened before the kill, reads its
// right bytes after a restarted daemon was asked to release the file.
func TestReaderOutlivesKilledDaemon(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	readerOutlives(t, outliving{m: d.M, cli: d.CLI, kill: d.Kill9, restart: d.Start, log: d.Log})
}

// In a cluster: the reader on n2, n2 killed and started again, the
// release asked of the owner n1.
func TestReaderOutlivesKilledNode(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n2 := c.Nodes["n2"]
	readerOutlives(t, outliving{m: n2.M, cli: c.CLI, kill: n2.Kill9, restart: n2.Start, log: n2.Log})
}

func TestWriterOutlivesKilledNode(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n2 := c.Nodes["n2"]
	writerOutlives(t, outliving{m: n2.M, cli: c.CLI, kill: n2.Kill9, restart: n2.Start, log: n2.Log})
}

// outliving is where a handle is opened (m), how its daemon is killed
// and started again, and how admin commands run.
type outliving struct {
	m             func(rel string) string
	cli           func(args ...string) (string, string, error)
	kill, restart func()
	log           func() string
}

// passthrough fails the test unless the handle just opened is served by
// kernel passthrough with the shield that outlives its daemon.
func (o outliving) passthrough(t *testing.T) {
	t.Helper()
	if l := o.log(); strings.Contains(l, "passthrough open without a shield") {
		t.Fatalf("the handle is not passthrough with a kernel-lived shield:\n%s", l)
	}
}

func (o outliving) mustCLI(t *testing.T, args ...string) {
	t.Helper()
	if out, errOut, err := o.cli(args...); err != nil {
		t.Fatalf("cascadefs %v: %v\n%s%s", args, err, out, errOut)
	}
}

func readerOutlives(t *testing.T, d outliving) {
	want := make([]byte, 4<<20)
	rand.Read(want)
	if err := os.WriteFile(d.m("f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	d.mustCLI(t, "migrate", "--premigrate", d.m("f"))
	testenv.DropCaches()
	f, err := os.Open(d.m("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.passthrough(t)
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, want[:1<<20]) {
		t.Fatalf("first MiB: %v", err)
	}
	d.kill()
	d.restart()
	d.cli("migrate", d.m("f")) // must not punch under the open handle
	testenv.DropCaches()
	rest, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("reading through the handle that outlived its daemon: %v", err)
	}
	if !bytes.Equal(rest, want[1<<20:]) {
		t.Fatalf("the handle that outlived its daemon read %d wrong bytes (%d zeros)", countDiff(rest, want[1<<20:]), countZeros(rest))
	}
	f.Close()
	d.mustCLI(t, "migrate", d.m("f"))
	testenv.DropCaches()
	if got, err := os.ReadFile(d.m("f")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the release: %v", err)
	}
}

// A writer opened before the kill writes after a restarted daemon was
// asked to migrate the file; no byte it was told it wrote is lost (the
// kernel fails such writes with ENOTCONN today, and a later kernel may let
// them through by passthrough: both are right).
func TestWriterOutlivesKilledDaemon(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	writerOutlives(t, outliving{m: d.M, cli: d.CLI, kill: d.Kill9, restart: d.Start, log: d.Log})
}

func writerOutlives(t *testing.T, d outliving) {
	want := make([]byte, 4<<20)
	rand.Read(want)
	if err := os.WriteFile(d.m("f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(d.m("f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.passthrough(t)
	// A write that returns an error is not lost (its caller knows); one
	// that returns success must be in the file at the end.
	patch := func(off int) error {
		b := make([]byte, 1<<20)
		rand.Read(b)
		n, err := f.WriteAt(b, int64(off))
		copy(want[off:], b[:n])
		return err
	}
	if err := patch(0); err != nil {
		t.Fatal(err)
	}
	d.kill()
	d.restart()
	d.cli("migrate", d.m("f")) // must not punch under the open handle
	if err := patch(2 << 20); err != nil {
		t.Logf("a write through the handle after its daemon died: %v", err)
	} else {
		t.Logf("a write through the handle after its daemon died went through")
	}
	f.Close()
	d.mustCLI(t, "migrate", d.m("f"))
	testenv.DropCaches()
	got, err := os.ReadFile(d.m("f"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the writer closed and the file was migrated: %v, %d wrong bytes", err, countDiff(got, want))
	}
}

func countZeros(b []byte) int {
	n := 0
	for _, c := range b {
		if c == 0 {
			n++
		}
	}
	return n
}
