package integration

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// recall-rate and migrate-rate cap the bytes per second a session moves
// to and from the archive, and status shows the rates as they run. The
// bounds checked are the cap's: 6 MiB at 2 MiB/s cannot take under 2 s.
func TestRateLimits(t *testing.T) {
	const size, rate = 6 << 20, 2 << 20
	archives(t, func(t *testing.T, newDaemon func(extra ...string) *testenv.Daemon) {
		d := newDaemon("--recall-rate", "2MiB", "--migrate-rate", "2MiB/s")
		want := writeRandom(t, d.M("f"), size)
		rates := func() daemon.Rates {
			var st struct {
				Mounts []daemon.Status `json:"mounts"`
			}
			if err := json.Unmarshal([]byte(d.MustCLI("status", "--json")), &st); err != nil || len(st.Mounts) != 1 || st.Mounts[0].Rates == nil {
				t.Fatalf("status: %v", err)
			}
			return *st.Mounts[0].Rates
		}
		if r := rates(); r.RecallLimit != rate || r.MigrateLimit != rate {
			t.Fatalf("limits in status: %+v", r)
		}
		// Both directions, each sampled while it runs.
		for _, dir := range []string{"migrate", "recall"} {
			start := time.Now()
			var done <-chan cliResult
			if dir == "migrate" {
				done = cliAsync(d, "migrate", d.M("f"))
			} else {
				testenv.DropCaches()
				ch := make(chan cliResult, 1)
				go func() {
					got := sumFile(t, d.M("f"))
					ch <- cliResult{nil, map[bool]string{true: "ok", false: "wrong bytes"}[got == want]}
				}()
				done = ch
			}
			var peak float64
			for r := (cliResult{}); ; {
				select {
				case r = <-done:
				case <-time.After(300 * time.Millisecond):
					now := rates()
					peak = max(peak, map[string]float64{"migrate": now.Migrate, "recall": now.Recall}[dir])
					continue
				}
				if r.err != nil || (dir == "recall" && r.out != "ok") {
					t.Fatalf("%s: %v %s", dir, r.err, r.out)
				}
				break
			}
			took := time.Since(start)
			if took < 2*time.Second {
				t.Errorf("%s of 6 MiB at 2 MiB/s took %v", dir, took)
			}
			if peak <= 0 || peak > 1.5*rate {
				t.Errorf("%s rate seen in status: peak %.0f B/s, cap %d", dir, peak, rate)
			}
			t.Logf("%s: %v, peak rate in status %.2f MiB/s", dir, took.Round(time.Millisecond), peak/(1<<20))
		}
		if _, stderr, err := d.CLI("mount", "--recall-rate", "fast", "--backing", d.Backing, "--archive", d.Archive, t.TempDir()); err == nil {
			t.Errorf("a bad recall-rate was accepted")
		} else if stderr == "" {
			t.Errorf("a bad recall-rate: no message")
		}
		os.Remove(d.M("f"))
	})
}
