// Package metrics keeps a node's counters, gauges and histograms and
// serves them at /metrics with the Prometheus client library, beside the
// Go runtime and process metrics every Prometheus user expects. Reporting
// goes through a small API (family name, value, label pairs) so that code
// reports without holding collectors, and a nil registry ignores it.
package metrics

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
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

// family is one declared metric: its collector and label names.
type family struct {
	labels    []string
	counter   *prometheus.CounterVec
	gauge     *prometheus.GaugeVec
	histogram *prometheus.HistogramVec
}

// Registry holds metric families. A nil *Registry ignores everything, so
// code can report without checking whether metrics are on.
type Registry struct {
	prom     *prometheus.Registry
	mu       sync.Mutex
	families map[string]*family
	collect  []func(*Registry)
}

// New returns a registry holding the Go runtime and process collectors.
func New() *Registry {
	r := &Registry{prom: prometheus.NewRegistry(), families: map[string]*family{}}
	r.prom.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Define declares a family with its label names (default: fs); reporting
// to an undeclared one panics, so a typo is found by the first test that
// reports it.
func (r *Registry) Define(name string, kind Kind, help string, labels ...string) {
	if r == nil {
		return
	}
	if len(labels) == 0 {
		labels = []string{"fs"}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.families[name]; ok {
		return
	}
	f := &family{labels: labels}
	var c prometheus.Collector
	switch kind {
	case Counter:
		f.counter = prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		c = f.counter
	case Gauge:
		f.gauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		c = f.gauge
	case Histogram:
		f.histogram = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: Buckets}, labels)
		c = f.histogram
	default:
		panic("metrics: unknown kind " + string(kind))
	}
	r.prom.MustRegister(c)
	r.families[name] = f
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

// family returns a declared family and the label values of name, value
// pairs in its order.
func (r *Registry) family(name string, pairs []string) (*family, []string) {
	r.mu.Lock()
	f, ok := r.families[name]
	r.mu.Unlock()
	if !ok {
		panic("metrics: undefined family " + name)
	}
	values := make([]string, len(f.labels))
	for i := 0; i+1 < len(pairs); i += 2 {
		for j, l := range f.labels {
			if l == pairs[i] {
				values[j] = pairs[i+1]
			}
		}
	}
	return f, values
}

// Add adds v to a counter; labels are name, value pairs.
func (r *Registry) Add(name string, v float64, labels ...string) {
	if r == nil {
		return
	}
	f, values := r.family(name, labels)
	f.counter.WithLabelValues(values...).Add(v)
}

// Set sets a gauge.
func (r *Registry) Set(name string, v float64, labels ...string) {
	if r == nil {
		return
	}
	f, values := r.family(name, labels)
	f.gauge.WithLabelValues(values...).Set(v)
}

// Forget drops every series of a gauge (before a collector sets it anew).
func (r *Registry) Forget(name string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	f, ok := r.families[name]
	r.mu.Unlock()
	if ok && f.gauge != nil {
		f.gauge.Reset()
	}
}

// Observe records one value in a histogram.
func (r *Registry) Observe(name string, v float64, labels ...string) {
	if r == nil {
		return
	}
	f, values := r.family(name, labels)
	f.histogram.WithLabelValues(values...).Observe(v)
}

// Gather runs the collect functions, then gathers every family.
func (r *Registry) Gather() ([]*dto.MetricFamily, error) {
	r.mu.Lock()
	collect := append([]func(*Registry){}, r.collect...)
	r.mu.Unlock()
	for _, fn := range collect {
		fn(r)
	}
	return r.prom.Gather()
}

// Write writes every family in the text format.
func (r *Registry) Write(w io.Writer) error {
	mfs, err := r.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}

// Serve serves the registry at http://addr/metrics until the listener is
// closed; it returns the listener (addr may be :0).
func Serve(addr string, r *Registry) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	go http.Serve(ln, mux)
	return ln, nil
}

// The families every node exports; each has one label, fs.
const (
	Usage         = "cascadefs_usage_bytes"
	Capacity      = "cascadefs_capacity_bytes"
	PendingEvents = "cascadefs_pending_events"
	HighBytes     = "cascadefs_high_threshold_bytes"
	LowBytes      = "cascadefs_low_threshold_bytes"
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

	CopyFaults   = "cascadefs_archive_copy_faults_total"
	CopyRepaired = "cascadefs_archive_copy_repairs_total"
)

// OwnerGauges are set, at each scrape, by the node that runs each
// filesystem's session; a node forgets them first (it may own fewer now).
var OwnerGauges = []string{Usage, Capacity, PendingEvents, HighBytes, LowBytes}

// NewNode returns a registry with the families of a node defined.
func NewNode() *Registry {
	r := New()
	r.Define(Usage, Gauge, "Allocated bytes of the filesystem, as its space monitor last measured (on the owner).")
	r.Define(Capacity, Gauge, "The quota, or the backing filesystem's size (on the owner).")
	r.Define(PendingEvents, Gauge, "Synchronous DM events queued or running in the session (on the owner).")
	r.Define(HighBytes, Gauge, "Usage past which the space monitor starts a migration cycle (on the owner).")
	r.Define(LowBytes, Gauge, "Usage a migration cycle brings the filesystem under (on the owner).")
	r.Define(MigratedFiles, Counter, "Files whose data this node released to the archive.")
	r.Define(MigratedBytes, Counter, "Bytes this node released (punched) after archiving them.")
	r.Define(UploadedBytes, Counter, "Bytes this node uploaded to the archive.")
	r.Define(RecalledFiles, Counter, "Files (or streams of a large file) this node recalled from the archive.")
	r.Define(RecalledBytes, Counter, "Bytes this node fetched from the archive in recalls.")
	r.Define(CopyFaults, Counter, "Recalls this node moved to the next archive copy (the copy failed, lacked the object or had wrong bytes).")
	r.Define(CopyRepaired, Counter, "Bad archive copies this node wrote again from a good copy.")
	r.Define(RecallSeconds, Histogram, "How long readers on this node waited for a READ event's answer.")
	r.Define(Takeovers, Counter, "Filesystems this node took over from a failed or leaving owner.")
	r.Define(SpaceCycles, Counter, "Migration cycles of the space monitor on this node.")
	r.Define(ReconcileRuns, Counter, "Reconciles of the filesystem with its archive run on this node.")
	r.Define(ReconcileDeleted, Counter, "Orphan archive objects that reconciles on this node deleted.")
	r.Define(ReconcileOrphans, Gauge, "Orphan objects the last reconcile found and kept (young, queued, dry run, or failed).")
	r.Define(ReconcileDamaged, Gauge, "Stubs whose archive copy the last reconcile found missing or not matching.")
	return r
}
