// Package metrics keeps a node's counters, gauges and histograms and
// serves them in the Prometheus text format (version 0.0.4). It is small
// on purpose: the client library would bring a dozen modules for what is
// a map and a printf here.
package metrics

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// Kind is a metric family's type.
type Kind string

const (
	Counter   Kind = "counter"
	Gauge     Kind = "gauge"
	Histogram Kind = "histogram"
)

// Buckets are the upper bounds of a latency histogram, in seconds.
var Buckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

type family struct {
	kind   Kind
	help   string
	series map[string]*series // by rendered labels
}

type series struct {
	value  float64
	counts []uint64 // histogram: per bucket, not cumulative
	sum    float64
	count  uint64
}

// Registry holds metric families. A nil *Registry ignores everything, so
// code can report without checking whether metrics are on.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
	collect  []func(*Registry)
}

// New returns an empty registry.
func New() *Registry { return &Registry{families: map[string]*family{}} }

// Define declares a family; reporting to an undeclared one panics, so a
// typo is found by the first test that reports it.
func (r *Registry) Define(name string, kind Kind, help string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.families[name]; !ok {
		r.families[name] = &family{kind: kind, help: help, series: map[string]*series{}}
	}
}

// OnCollect runs fn before every scrape (to set gauges that are read, not kept).
func (r *Registry) OnCollect(fn func(*Registry)) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.collect = append(r.collect, fn)
	r.mu.Unlock()
}

func (r *Registry) series(name string, labels []string) *series {
	f, ok := r.families[name]
	if !ok {
		panic("metrics: undefined family " + name)
	}
	key := renderLabels(labels)
	s, ok := f.series[key]
	if !ok {
		s = &series{}
		if f.kind == Histogram {
			s.counts = make([]uint64, len(Buckets))
		}
		f.series[key] = s
	}
	return s
}

// Add adds v to a counter; labels are name, value pairs.
func (r *Registry) Add(name string, v float64, labels ...string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.series(name, labels).value += v
	r.mu.Unlock()
}

// Set sets a gauge.
func (r *Registry) Set(name string, v float64, labels ...string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.series(name, labels).value = v
	r.mu.Unlock()
}

// Forget drops every series of a gauge (before a collector sets it anew).
func (r *Registry) Forget(name string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	if f, ok := r.families[name]; ok {
		f.series = map[string]*series{}
	}
	r.mu.Unlock()
}

// Observe records one value in a histogram.
func (r *Registry) Observe(name string, v float64, labels ...string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.series(name, labels)
	for i, le := range Buckets {
		if v <= le {
			s.counts[i]++
			break
		}
	}
	s.sum += v
	s.count++
}

func renderLabels(labels []string) string {
	if len(labels) == 0 {
		return ""
	}
	var b strings.Builder
	for i := 0; i+1 < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", labels[i], labels[i+1])
	}
	return b.String()
}

// Write writes every family in the text format, sorted by name.
func (r *Registry) Write(w io.Writer) error {
	r.mu.Lock()
	collect := append([]func(*Registry){}, r.collect...)
	r.mu.Unlock()
	for _, fn := range collect {
		fn(r)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.families))
	for n := range r.families {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f := r.families[n]
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", n, f.help, n, f.kind)
		keys := make([]string, 0, len(f.series))
		for k := range f.series {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			s := f.series[k]
			if f.kind != Histogram {
				fmt.Fprintf(&b, "%s%s %s\n", n, braces(k), num(s.value))
				continue
			}
			var cum uint64
			for i, le := range Buckets {
				cum += s.counts[i]
				fmt.Fprintf(&b, "%s_bucket%s %d\n", n, braces(join(k, fmt.Sprintf("le=%q", num(le)))), cum)
			}
			fmt.Fprintf(&b, "%s_bucket%s %d\n", n, braces(join(k, `le="+Inf"`)), s.count)
			fmt.Fprintf(&b, "%s_sum%s %s\n%s_count%s %d\n", n, braces(k), num(s.sum), n, braces(k), s.count)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func braces(labels string) string {
	if labels == "" {
		return ""
	}
	return "{" + labels + "}"
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "," + b
}

func num(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return strings.TrimSuffix(fmt.Sprintf("%g", v), ".0")
}

// Serve serves the registry at http://addr/metrics until the listener is
// closed; it returns the listener (addr may be :0).
func Serve(addr string, r *Registry) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		r.Write(w)
	})
	go http.Serve(ln, mux)
	return ln, nil
}

// The families every node exports; each has one label, fs.
const (
	Usage         = "cascadefs_usage_bytes"
	Capacity      = "cascadefs_capacity_bytes"
	PendingEvents = "cascadefs_pending_events"
	MigratedFiles = "cascadefs_migrated_files_total"
	MigratedBytes = "cascadefs_migrated_bytes_total"
	UploadedBytes = "cascadefs_uploaded_bytes_total"
	RecalledFiles = "cascadefs_recalled_files_total"
	RecalledBytes = "cascadefs_recalled_bytes_total"
	RecallSeconds = "cascadefs_recall_seconds"
	Takeovers     = "cascadefs_takeovers_total"
	SpaceCycles   = "cascadefs_space_cycles_total"

	ReconcileRuns    = "cascadefs_reconcile_runs_total"
	ReconcileDeleted = "cascadefs_reconcile_deleted_objects_total"
	ReconcileOrphans = "cascadefs_reconcile_orphans"
	ReconcileDamaged = "cascadefs_reconcile_damaged_stubs"
)

// NewNode returns a registry with the families of a node defined.
func NewNode() *Registry {
	r := New()
	r.Define(Usage, Gauge, "Allocated bytes of the filesystem, as its space monitor last measured (on the owner).")
	r.Define(Capacity, Gauge, "The quota, or the backing filesystem's size (on the owner).")
	r.Define(PendingEvents, Gauge, "Synchronous DM events queued or running in the session (on the owner).")
	r.Define(MigratedFiles, Counter, "Files whose data this node released to the archive.")
	r.Define(MigratedBytes, Counter, "Bytes this node released (punched) after archiving them.")
	r.Define(UploadedBytes, Counter, "Bytes this node uploaded to the archive.")
	r.Define(RecalledFiles, Counter, "Files (or streams of a large file) this node recalled from the archive.")
	r.Define(RecalledBytes, Counter, "Bytes this node fetched from the archive in recalls.")
	r.Define(RecallSeconds, Histogram, "How long readers on this node waited for a READ event's answer.")
	r.Define(Takeovers, Counter, "Filesystems this node took over from a failed or leaving owner.")
	r.Define(SpaceCycles, Counter, "Migration cycles of the space monitor on this node.")
	r.Define(ReconcileRuns, Counter, "Reconciles of the filesystem with its archive run on this node.")
	r.Define(ReconcileDeleted, Counter, "Orphan archive objects that reconciles on this node deleted.")
	r.Define(ReconcileOrphans, Gauge, "Orphan objects the last reconcile found and kept (young, queued, dry run, or failed).")
	r.Define(ReconcileDamaged, Gauge, "Stubs whose archive copy the last reconcile found missing or not matching.")
	return r
}
