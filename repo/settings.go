package repo

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/internal/units"
)

// A setting of a filesystem (`cascadefs fs set NAME KEY=VALUE`): each key
// has a check, so a bad value is refused before anything is written.
type setting struct {
	help  string
	check func(string) error
}

var settings = map[string]setting{
	"recall":        {"stream (by region, default) or whole (always the whole file)", oneOf("stream", "whole")},
	"small-file":    {"files up to this size are recalled whole (default 16MiB; 0: none)", checkSize},
	"window":        {"first GET of a streaming recall (default 4MiB; 0: the default)", checkSize},
	"max-window":    {"largest GET of a sequential reader (default 256MiB; 0: the default)", checkSize},
	"workers":       {"DM session workers (default 8)", checkInt(1, 1024)},
	"event-timeout": {"a reader waits this long for its recall, then EIO (default 5m; 0: the default)", checkDuration},
	"release-wait":  {"a release waits this long for open handles (default 5s; 0: skip open files at once)", checkDuration},
	"failover":      {"async (race once the owner's lease lapsed, default) or sync (vote first)", oneOf("async", "sync")},
	"hold-lease":    {"a node keeps a file closed for another node's release at most this long (default 1m); a release punches only within it", checkDuration},
	// The space monitor (see migrate.ParsePolicy for how they combine).
	"quota":      {"space the filesystem may use, such as 100GiB (default, or 0: the backing filesystem's size)", checkSize},
	"high":       {"usage percentage that starts a migration cycle (default 70)", checkPercent(1, 100)},
	"low":        {"usage percentage a migration cycle brings usage under (default 60)", checkPercent(0, 99)},
	"interval":   {"how often the space monitor checks usage (default 1m; 0: the default)", checkDuration},
	"min-size":   {"files smaller than this are never migrated by the monitor (default 1B; 0: any size)", checkSize},
	"min-age":    {"files used (read or written) within this long are never migrated by the monitor (default 0s)", checkDuration},
	"exclude":    {"comma-separated glob patterns of paths the monitor never migrates, such as *.db,tmp/*", checkGlobs},
	"premigrate": {"percentage of the quota kept premigrated after a cycle, for instant releases (default 0)", checkPercent(0, 100)},
}

// CheckSetting validates one KEY=VALUE of a filesystem.
func CheckSetting(key, value string) error {
	s, ok := settings[key]
	if !ok {
		return fmt.Errorf("unknown setting %q (known: %s)", key, strings.Join(SettingKeys(), ", "))
	}
	if err := s.check(value); err != nil {
		return fmt.Errorf("setting %s=%s: %w", key, value, err)
	}
	return nil
}

// SettingKeys lists the known keys.
func SettingKeys() []string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// SettingHelp describes a key.
func SettingHelp(key string) string { return settings[key].help }

func oneOf(values ...string) func(string) error {
	return func(v string) error {
		for _, ok := range values {
			if v == ok {
				return nil
			}
		}
		return fmt.Errorf("want one of %s", strings.Join(values, ", "))
	}
}

func checkInt(lo, hi int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("want a whole number from %d to %d", lo, hi)
		}
		return nil
	}
}

// checkDuration: a duration, 0 included (each key says what 0 means).
func checkDuration(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("want a duration such as 0s, 30s or 5m")
	}
	return nil
}

func checkPercent(lo, hi int) func(string) error {
	return func(v string) error {
		_, err := units.ParsePercent(v, lo, hi)
		return err
	}
}

func checkGlobs(v string) error {
	_, err := units.ParseGlobs(v)
	return err
}

func checkSize(v string) error {
	_, err := ParseSize(v)
	return err
}

// ParseSize reads a byte count with an optional unit (see units.ParseSize).
func ParseSize(v string) (int64, error) { return units.ParseSize(v) }
