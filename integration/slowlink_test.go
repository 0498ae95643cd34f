package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// Through a link like one to another rack (2 ms round trips, 125 MB/s
// per connection: one GET is slower than a reader, so its streams split
// into parallel ranged GETs), two stubs read whole at once and a third
// read at random offsets give every byte right, and end premigrated.
func TestStubReadsThroughSlowLink(t *testing.T) {
	local := testenv.StartMinIO(t)
	m := local.Through(t, testenv.StartLink(t, local.Endpoint, 2*time.Millisecond, 125e6))
	d := testenv.NewDaemon(t, m.Bucket(t, "far"), m.EnvList(), "--window", "1048576", "--log-level", "debug")
	d.Start()
	names := []string{"a", "b", "c"}
	data := map[string][]byte{}
	for _, n := range names {
		b := make([]byte, 48<<20+4321)
		rand.Read(b)
		data[n] = b
		must(t, os.WriteFile(d.M(n), b, 0o644))
	}
	d.MustCLI("migrate", d.M("a"), d.M("b"), d.M("c"))
	testenv.DropCaches()

	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for _, n := range names[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := os.ReadFile(d.M(n))
			if err != nil || !bytes.Equal(got, data[n]) {
				errs <- fmt.Sprintf("%s: read whole: %d bytes (equal: %v), %v", n, len(got), bytes.Equal(got, data[n]), err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := os.Open(d.M("c"))
		if err != nil {
			errs <- err.Error()
			return
		}
		defer f.Close()
		rng := mrand.New(mrand.NewPCG(7, 8))
		want := data["c"]
		for range 40 {
			off := rng.Int64N(int64(len(want)))
			buf := make([]byte, min(int64(rng.IntN(3<<20)+1), int64(len(want))-off))
			if n, err := f.ReadAt(buf, off); err != nil || !bytes.Equal(buf[:n], want[off:off+int64(n)]) || n != len(buf) {
				errs <- fmt.Sprintf("c: pread of %d at %d: %d bytes, %v", len(buf), off, n, err)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for _, n := range names[:2] {
		if e := stateAfterRead(t, d, n); e.State != "premigrated" {
			t.Errorf("%s after its read: %+v", n, e)
		}
	}
	if got := sumFile(t, d.M("c")); got != sha256Of(data["c"]) {
		t.Error("c differs once read whole")
	}

}
