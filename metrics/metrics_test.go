package metrics

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestTextFormat(t *testing.T) {
	r := NewNode()
	r.Add(MigratedFiles, 2, "fs", "a")
	r.Add(MigratedFiles, 1, "fs", "a")
	r.Add(MigratedBytes, 1<<20, "fs", "b")
	r.Observe(RecallSeconds, 0.003, "fs", "a")
	r.Observe(RecallSeconds, 2, "fs", "a")
	r.Observe(RecallSeconds, 1000, "fs", "a") // past the last bucket: only +Inf
	r.OnCollect(func(r *Registry) { r.Set(Usage, 42, "fs", "a") })

	ln, err := Serve("127.0.0.1:0", r)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, line := range []string{
		"# TYPE cascadefs_migrated_files_total counter",
		`cascadefs_migrated_files_total{fs="a"} 3`,
		`cascadefs_migrated_bytes_total{fs="b"} 1.048576e+06`,
		`cascadefs_usage_bytes{fs="a"} 42`,
		"# TYPE cascadefs_recall_seconds histogram",
		`cascadefs_recall_seconds_bucket{fs="a",le="0.001"} 0`,
		`cascadefs_recall_seconds_bucket{fs="a",le="0.005"} 1`,
		`cascadefs_recall_seconds_bucket{fs="a",le="2.5"} 2`,
		`cascadefs_recall_seconds_bucket{fs="a",le="60"} 2`,
		`cascadefs_recall_seconds_bucket{fs="a",le="+Inf"} 3`,
		`cascadefs_recall_seconds_sum{fs="a"} 1002.003`,
		`cascadefs_recall_seconds_count{fs="a"} 3`,
		"# TYPE go_goroutines gauge", // the runtime and process collectors
		"# TYPE process_cpu_seconds_total counter",
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("missing %q in:\n%s", line, text)
		}
	}
}

func TestNilRegistryIgnoresReports(t *testing.T) {
	var r *Registry
	r.Add(MigratedFiles, 1, "fs", "a")
	r.Observe(RecallSeconds, 1, "fs", "a")
	r.Set(Usage, 1)
	r.Define(Usage, Gauge, "")
	r.OnCollect(func(*Registry) {})
	r.Forget(Usage) // none of these may panic
}

func TestUndefinedFamilyPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("a report to an undefined family did not panic")
		}
	}()
	New().Add("cascadefs_typo_total", 1)
}

// The Grafana dashboard shipped in docs/ is valid JSON and asks only for
// metrics a node exports (a renamed family would leave a panel empty).
func TestDashboardUsesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	r := NewNode()
	var text strings.Builder
	if err := r.Write(&text); err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{} // defined families, and what the collectors write
	for name := range r.families {
		exported[name] = true
	}
	for _, line := range strings.Split(text.String(), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			exported[f[2]] = true
		}
	}
	name := regexp.MustCompile(`\b(cascadefs|process|go)_[a-z_]+\b`)
	uses := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				uses++
				base := regexp.MustCompile(`_(bucket|sum|count)$`).ReplaceAllString(m, "")
				if !exported[m] && !exported[base] {
					t.Errorf("panel %q asks for %s, which no node exports", p.Title, m)
				}
			}
		}
	}
	if uses < 10 {
		t.Fatalf("only %d metric uses found in the dashboard", uses)
	}
}
