package settings

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	s, err := Parse(map[string]string{"quota": "100MiB", "high": "80", "low": "50%", "interval": "5s",
		"min-size": "4KiB", "min-age": "1h", "exclude": "*.db, tmp/*", "premigrate": "10", "recall": "whole",
		"small-file": "1MiB", "workers": "3", "event-timeout": "2m", "release-wait": "0", "hold-lease": "30s"})
	if err != nil {
		t.Fatal(err)
	}
	p := s.Policy
	if p.Quota != 100<<20 || p.High != 80 || p.Low != 50 || p.Interval != 5*time.Second || p.MinSize != 4096 ||
		p.MinAge != time.Hour || len(p.Exclude) != 2 || p.Exclude[1] != "tmp/*" || p.Premigrate != 10 {
		t.Fatalf("policy %+v", p)
	}
	if s.Recall.SmallFile != 1<<62 || s.Workers != 3 || s.EventTimeout != 2*time.Minute || s.ReleaseWait != 0 || s.HoldLease != 30*time.Second {
		t.Fatalf("parsed %+v", s)
	}
	// 0 is a size and a duration like any other; each key says what it means.
	zero, err := Parse(map[string]string{"quota": "0", "min-size": "0", "min-age": "0s", "interval": "0s",
		"small-file": "0", "window": "0", "event-timeout": "0s"})
	d := Defaults()
	if err != nil || zero.Policy.Quota != 0 || zero.Policy.MinSize != 0 || zero.Policy.Interval != d.Policy.Interval ||
		zero.Recall.SmallFile != 1 || zero.Recall.Window != d.Recall.Window || zero.EventTimeout != d.EventTimeout {
		t.Fatalf("zero settings: %+v %v", zero, err)
	}
	for _, bad := range []map[string]string{
		{"high": "50", "low": "60"}, // low over high
		{"low": "65", "high": "65"},
		{"high": "101"},
		{"quota": "-1"},
		{"interval": "-1s"},
		{"min-age": "-1h"},
		{"exclude": "a,[x"},
		{"workers": "0"},
		{"recall": "sometimes"},
		{"nosuch": "1"},
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%v) accepted", bad)
		}
	}
}

// Every key's documented default is what Defaults holds, for mount and
// node alike (they once differed: event-timeout 10m against 5m).
func TestDefaultsAreTheTable(t *testing.T) {
	d := Defaults()
	if d.EventTimeout != 5*time.Minute || d.Recall.SmallFile != 16<<20 || d.Workers != 8 || d.ReleaseWait != 5*time.Second ||
		d.HoldLease != time.Minute || d.Policy.High != 70 || d.Policy.Low != 60 || d.Failover != "async" ||
		d.Retention != 7*24*time.Hour {
		t.Fatalf("defaults %+v", d)
	}
	for _, k := range Keys() {
		if def := mustDefault(k); def != "" && Check(k, def) != nil {
			t.Errorf("default of %s refused", k)
		}
		if Help(k) == "" {
			t.Errorf("%s has no help", k)
		}
	}
	if Check("nosuch", "1") == nil || Check("workers", "x") == nil {
		t.Fatal("bad settings accepted")
	}
}

func mustDefault(name string) string {
	k, _ := find(name)
	return k.def
}

func TestSettings(t *testing.T) {
	for _, kv := range [][2]string{{"small-file", "16MiB"}, {"window", "64KiB"}, {"workers", "3"}, {"event-timeout", "90s"}, {"failover", "sync"}, {"recall", "whole"}} {
		if err := Check(kv[0], kv[1]); err != nil {
			t.Errorf("%s=%s refused: %v", kv[0], kv[1], err)
		}
	}
	for _, kv := range [][2]string{{"small-file", "-1"}, {"small-file", "lots"}, {"workers", "0"}, {"event-timeout", "soon"}, {"failover", "maybe"}, {"colour", "red"}} {
		if err := Check(kv[0], kv[1]); err == nil {
			t.Errorf("%s=%s accepted", kv[0], kv[1])
		}
	}
}

// 0 is accepted for every size and duration (each key says what it means);
// negative values and garbage are not.
func TestSettingsAcceptZero(t *testing.T) {
	for _, kv := range [][2]string{{"min-size", "0"}, {"quota", "0"}, {"small-file", "0B"}, {"window", "0"},
		{"max-window", "0KiB"}, {"release-wait", "0s"}, {"event-timeout", "0s"}, {"interval", "0s"}, {"min-age", "0s"}} {
		if err := Check(kv[0], kv[1]); err != nil {
			t.Errorf("%s=%s refused: %v", kv[0], kv[1], err)
		}
	}
	for _, kv := range [][2]string{{"min-size", "-1"}, {"release-wait", "-1s"}, {"interval", "soon"}, {"quota", "lots"}} {
		if err := Check(kv[0], kv[1]); err == nil {
			t.Errorf("%s=%s accepted", kv[0], kv[1])
		}
	}
}

// Each duration and size has a floor, said in the refusal (issue 20, item
// 5): interval=1ns would spin a core, event-timeout=1ns turn every stub
// read into EIO. 0 still means the default (or none, or no cap).
func TestFloors(t *testing.T) {
	for _, c := range []struct{ key, value, want string }{
		{"interval", "1ns", "at least 100ms"},
		{"event-timeout", "1ns", "at least 10s"},
		{"event-timeout", "9s", "at least 10s"},
		{"hold-lease", "1ms", "at least 1s"},
		{"release-wait", "1ns", "at least 10ms"},
		{"window", "1", "at least 64KiB"},
		{"max-window", "4096", "at least 64KiB"},
		{"recall-rate", "1", "at least 64KiB"},
		{"migrate-rate", "100/s", "at least 64KiB"},
		{"quota", "1KiB", "at least 1MiB"},
	} {
		err := Check(c.key, c.value)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s=%s: %v, want a refusal saying %q", c.key, c.value, err, c.want)
		}
	}
	for _, kv := range [][2]string{{"interval", "100ms"}, {"event-timeout", "10s"}, {"hold-lease", "1s"}, {"release-wait", "10ms"},
		{"window", "64KiB"}, {"recall-rate", "64KiB"}, {"quota", "1MiB"}, {"interval", "0"}, {"event-timeout", "0"}, {"recall-rate", "0"}} {
		if err := Check(kv[0], kv[1]); err != nil {
			t.Errorf("%s=%s at the floor (or 0): %v", kv[0], kv[1], err)
		}
	}
}

func TestRetention(t *testing.T) {
	for v, want := range map[string]time.Duration{"0": 0, "0s": 0, "7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90m": 90 * time.Minute} {
		s, err := Parse(map[string]string{"retention": v})
		if err != nil || s.Retention != want {
			t.Errorf("retention=%s: %v %v, want %v", v, s.Retention, err, want)
		}
	}
	for _, bad := range []string{"30s", "-1d", "xd", "7d-1h", "1w"} {
		if err := Check("retention", bad); err == nil {
			t.Errorf("retention=%s accepted", bad)
		}
	}
}
