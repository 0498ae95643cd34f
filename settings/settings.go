// Package settings is the one schema of a filesystem's settings: each key
// with its default, its help and how it is read, in one table. `cascadefs
// fs set` checks with it, `cascadefs mount` makes its flags from it, and
// node and mount daemons read the stored values with it, so a default is
// defined (and documented) once.
package settings

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/internal/units"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/recall"
)

// FS is a filesystem's settings, read: what the daemon, the DM session,
// recall, migration and the space monitor are given, as it is. Each
// field's default and meaning is its key's line in the table below (keys);
// Defaults holds them all. The packages below restate none of them.
type FS struct {
	// Recall: small-file, window and max-window (recall.DefaultConfig
	// adds what is not a setting: streams and retries).
	Recall       recall.Config
	Workers      int           // workers: DM events handled at once
	EventTimeout time.Duration // event-timeout: a reader waits this long for its recall
	ReleaseWait  time.Duration // release-wait: for open handles (0: skip open files at once)
	HoldLease    time.Duration // hold-lease: a release hold on another node lasts at most this
	Failover     string        // failover: async or sync
	RecallRate   int64         // recall-rate: bytes per second the owner fetches at most (0: no cap)
	MigrateRate  int64         // migrate-rate: bytes per second the owner uploads at most (0: no cap)
	Retention    time.Duration // retention: a deleted or replaced file's archive copy is kept this long (0: deleted at once)
	ScrubEvery   time.Duration // scrub-interval: the owner reads the archive back this often (0: never by itself)
	ScrubRate    int64         // scrub-rate: bytes per second those runs read at most (0: no cap)
	KeyFile      string        // encryption-key-file: archive keys that seal uploads (empty: in the clear)
	// Policy: the space monitor's keys, from leader to premigrate
	// (migrate.DefaultPolicy adds its workers and candidate bound).
	Policy migrate.Policy
}

// key is one setting: its name, its default (as a user writes it), what
// it is for, and how a value is read into FS.
type key struct {
	name, def, help string
	set             func(*FS, string) error
}

var keys = []key{
	{"recall", "stream", "stream (by region) or whole (always the whole file)", func(s *FS, v string) error {
		switch v {
		case "stream":
		case "whole":
			s.Recall.SmallFile = 1 << 62
		default:
			return fmt.Errorf("want stream or whole")
		}
		return nil
	}},
	{"small-file", "16MiB", "files up to this size are recalled whole (0: none)", func(s *FS, v string) error {
		n, err := units.ParseSize(v)
		if n == 0 {
			n = 1 // none: a 1-byte file is one region anyway
		}
		if s.Recall.SmallFile != 1<<62 { // recall=whole wins
			s.Recall.SmallFile = n
		}
		return err
	}},
	{"window", "4MiB", "first GET of a streaming recall (0: the default; at least 64KiB)", sizeOr(minWindow, func(s *FS) *int64 { return &s.Recall.Window })},
	{"max-window", "256MiB", "largest GET of a sequential reader (0: the default; at least 64KiB)", sizeOr(minWindow, func(s *FS) *int64 { return &s.Recall.MaxWindow })},
	{"workers", "8", "DM session workers: events handled at once", func(s *FS, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1024 {
			return fmt.Errorf("want a whole number from 1 to 1024")
		}
		s.Workers = n
		return nil
	}},
	{"event-timeout", "5m", "a reader waits this long for its recall, then EIO (0: the default; at least 10s)", durationOr(minEventTimeout, func(s *FS) *time.Duration { return &s.EventTimeout })},
	{"release-wait", "5s", "a release waits this long for open handles (0: skip open files at once; else at least 10ms)", func(s *FS, v string) error {
		d, err := duration(v)
		if err == nil && d > 0 && d < minReleaseWait {
			return atLeast(time.Duration(minReleaseWait), "0 skips open files at once")
		}
		s.ReleaseWait = d
		return err
	}},
	{"hold-lease", "1m", "a node keeps a file closed for another node's release at most this long; a release punches only within it (0: the default; at least 1s)", durationOr(minHoldLease, func(s *FS) *time.Duration { return &s.HoldLease })},
	{"failover", "async", "async (race once the owner's lease lapsed) or sync (vote first)", func(s *FS, v string) error {
		if v != "async" && v != "sync" {
			return fmt.Errorf("want async or sync")
		}
		s.Failover = v
		return nil
	}},
	{"retention", "7d", "the archive copy of a deleted file, and the old copy of a migrated file that is rewritten, is kept this long (undelete brings it back), such as 30d or 12h (0: deleted at once; else at least 1m)", func(s *FS, v string) error {
		d, err := days(v)
		if err == nil && d > 0 && d < minRetention {
			return atLeast(minRetention, "0 deletes at once")
		}
		s.Retention = d
		return err
	}},
	{"scrub-interval", "0", "the owner reads every copy of the archive back and checks and repairs it this often, such as 30d (0: only when asked; else at least 1m)", func(s *FS, v string) error {
		d, err := days(v)
		if err == nil && d > 0 && d < time.Minute {
			return atLeast(time.Minute, "0 runs none by itself")
		}
		s.ScrubEvery = d
		return err
	}},
	{"scrub-rate", "50MiB", "bytes per second a scrub run by scrub-interval reads from the archive at most (0: no cap)", func(s *FS, v string) (err error) {
		s.ScrubRate, err = units.ParseSize(v)
		return err
	}},
	{"encryption-key-file", "", "a file of archive keys (cascadefs keygen --archive-key), the same on every node: each upload is sealed (AES-256-GCM) with its first key before it leaves the node; the others still open what they sealed (empty: uploads go in the clear)", func(s *FS, v string) error {
		if v != "" && !filepath.IsAbs(v) {
			return fmt.Errorf("want an absolute path")
		}
		s.KeyFile = v
		return nil
	}},
	{"leader", "0", "a migrated file keeps its first SIZE bytes on disk (rounded up to a block), so headers read without a recall (0: none)", func(s *FS, v string) (err error) {
		s.Policy.Leader, err = units.ParseSize(v)
		return err
	}},
	{"recall-rate", "0", "bytes per second the node running the session fetches from the archive at most, such as 100MiB (0: no cap; else at least 64KiB)", rate(func(s *FS) *int64 { return &s.RecallRate })},
	{"migrate-rate", "0", "bytes per second the node running the session uploads to the archive at most, such as 50MiB (0: no cap; else at least 64KiB)", rate(func(s *FS) *int64 { return &s.MigrateRate })},
	// The space monitor (see migrate.Policy for how they combine).
	{"quota", "0", "space the filesystem may use, such as 100GiB (0: the backing filesystem's size; else at least 1MiB)", func(s *FS, v string) (err error) {
		s.Policy.Quota, err = units.ParseSize(v)
		if err == nil && s.Policy.Quota > 0 && s.Policy.Quota < minQuota {
			return atLeast(int64(minQuota), "0 is the backing filesystem's size")
		}
		return err
	}},
	{"high", "70", "usage percentage that starts a migration cycle", func(s *FS, v string) (err error) {
		s.Policy.High, err = units.ParsePercent(v, 1, 100)
		return err
	}},
	{"low", "60", "usage percentage a migration cycle brings usage under", func(s *FS, v string) (err error) {
		s.Policy.Low, err = units.ParsePercent(v, 0, 99)
		return err
	}},
	{"interval", "1m", "how often the space monitor checks usage (0: the default; at least 100ms)", durationOr(minInterval, func(s *FS) *time.Duration { return &s.Policy.Interval })},
	{"min-size", "1B", "files smaller than this are never migrated by the monitor (0: any size)", func(s *FS, v string) (err error) {
		s.Policy.MinSize, err = units.ParseSize(v)
		return err
	}},
	{"min-age", "0s", "files used (read or written) within this long are never migrated by the monitor", func(s *FS, v string) (err error) {
		s.Policy.MinAge, err = duration(v)
		return err
	}},
	{"exclude", "", "comma-separated glob patterns of paths the monitor never migrates, such as *.db,tmp/*", func(s *FS, v string) (err error) {
		s.Policy.Exclude, err = units.ParseGlobs(v)
		return err
	}},
	{"premigrate", "0", "percentage of the quota kept premigrated after a cycle, for instant releases", func(s *FS, v string) (err error) {
		s.Policy.Premigrate, err = units.ParsePercent(v, 0, 100)
		return err
	}},
}

// days is duration with whole days too ("7d", "1d12h").
func days(v string) (time.Duration, error) {
	var whole time.Duration
	if n, rest, ok := strings.Cut(v, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil || d < 0 || d > 100*365 {
			return 0, fmt.Errorf("want a duration such as 0, 12h, 7d or 1d12h")
		}
		whole, v = time.Duration(d)*24*time.Hour, rest
		if v == "" {
			return whole, nil
		}
	}
	d, err := duration(v)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 0, 12h, 7d or 1d12h")
	}
	return whole + d, nil
}

func duration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("want a duration such as 0s, 30s or 5m")
	}
	return d, nil
}

// Floors: a value below its floor does no good and some harm (a 1ns
// interval spins a core, a 1ns event timeout makes every stub read EIO),
// so it is refused with the floor in the sentence.
const (
	minEventTimeout = 10 * time.Second
	minHoldLease    = time.Second
	minInterval     = 100 * time.Millisecond
	minReleaseWait  = 10 * time.Millisecond
	minWindow       = 64 << 10
	minRate         = 64 << 10
	minQuota        = 1 << 20
	minRetention    = time.Minute
)

// atLeast is the refusal of a value under its floor.
func atLeast[T time.Duration | int64](floor T, zero string) error {
	f := fmt.Sprint(floor)
	if n, ok := any(floor).(int64); ok {
		f = strings.ReplaceAll(units.Human(n), ".0 ", "")
	}
	return fmt.Errorf("want at least %s (%s)", f, zero)
}

// durationOr reads a duration into the field; 0 keeps the default, and
// anything else must be at least floor.
func durationOr(floor time.Duration, field func(*FS) *time.Duration) func(*FS, string) error {
	return func(s *FS, v string) error {
		d, err := duration(v)
		if err == nil && d > 0 && d < floor {
			return atLeast(floor, "0 keeps the default")
		}
		if err == nil && d > 0 {
			*field(s) = d
		}
		return err
	}
}

// sizeOr reads a size into the field; 0 keeps the default, and anything
// else must be at least floor.
func sizeOr(floor int64, field func(*FS) *int64) func(*FS, string) error {
	return func(s *FS, v string) error {
		n, err := units.ParseSize(v)
		if err == nil && n > 0 && n < floor {
			return atLeast(floor, "0 keeps the default")
		}
		if err == nil && n > 0 {
			*field(s) = n
		}
		return err
	}
}

// rate reads bytes per second (a "/s" suffix allowed); 0 is no cap.
func rate(field func(*FS) *int64) func(*FS, string) error {
	return func(s *FS, v string) error {
		n, err := units.ParseSize(strings.TrimSuffix(v, "/s"))
		if err == nil && n > 0 && n < minRate {
			return atLeast(int64(minRate), "0 is no cap")
		}
		*field(s) = n
		return err
	}
}

func find(name string) (key, bool) {
	for _, k := range keys {
		if k.name == name {
			return k, true
		}
	}
	return key{}, false
}

// Defaults is every setting at its default.
func Defaults() FS {
	// What is not a setting (stream counts, retries, monitor workers)
	// comes from the packages; every setting from the table.
	s := FS{Recall: recall.DefaultConfig(), Policy: migrate.DefaultPolicy()}
	for _, k := range keys {
		if k.def != "" {
			if err := k.set(&s, k.def); err != nil {
				panic(fmt.Sprintf("settings: default of %s: %v", k.name, err))
			}
		}
	}
	return s
}

// Parse reads stored settings over the defaults. Keys are applied in the
// schema's order (recall before small-file), and the whole is checked
// (low under high).
func Parse(values map[string]string) (FS, error) {
	s := Defaults()
	for name := range values {
		if _, ok := find(name); !ok {
			return s, unknown(name)
		}
	}
	for _, k := range keys {
		v, ok := values[k.name]
		if !ok {
			continue
		}
		if err := k.set(&s, v); err != nil {
			return s, fmt.Errorf("setting %s=%s: %w", k.name, v, err)
		}
	}
	if s.Policy.Low >= s.Policy.High {
		return s, fmt.Errorf("setting low=%d must be under high=%d", s.Policy.Low, s.Policy.High)
	}
	return s, nil
}

// Check validates one KEY=VALUE.
func Check(name, value string) error {
	k, ok := find(name)
	if !ok {
		return unknown(name)
	}
	s := Defaults()
	if err := k.set(&s, value); err != nil {
		return fmt.Errorf("setting %s=%s: %w", name, value, err)
	}
	return nil
}

func unknown(name string) error {
	return fmt.Errorf("unknown setting %q (known: %s)", name, strings.Join(Keys(), ", "))
}

// Keys lists the known keys, sorted.
func Keys() []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k.name)
	}
	sort.Strings(out)
	return out
}

// Help describes a key, with its default.
func Help(name string) string {
	k, ok := find(name)
	if !ok {
		return ""
	}
	if k.def == "" {
		return k.help
	}
	return fmt.Sprintf("%s (default %s)", k.help, k.def)
}
