package repo

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A setting of a filesystem (`cascadefs fs set NAME KEY=VALUE`): each key
// has a check, so a bad value is refused before anything is written.
type setting struct {
	help  string
	check func(string) error
}

var settings = map[string]setting{
	"recall":        {"stream (by region, default) or whole (always the whole file)", oneOf("stream", "whole")},
	"small-file":    {"files up to this size are recalled whole (default 16MiB)", checkSize},
	"window":        {"first GET of a streaming recall (default 4MiB)", checkSize},
	"max-window":    {"largest GET of a sequential reader (default 256MiB)", checkSize},
	"workers":       {"DM session workers (default 8)", checkInt(1, 1024)},
	"event-timeout": {"a reader waits this long for its recall, then EIO (default 5m)", checkDuration},
	"release-wait":  {"a release waits this long for open handles (default 5s)", checkDuration},
	"failover":      {"async (lock race, default) or sync (vote, then lock)", oneOf("async", "sync")},
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

func checkDuration(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return fmt.Errorf("want a duration such as 30s or 5m")
	}
	return nil
}

func checkSize(v string) error {
	_, err := ParseSize(v)
	return err
}

// ParseSize reads a byte count with an optional unit: 4096, 64KiB, 16MiB,
// 2GiB, 1TiB (also KB, MB, GB, TB as powers of ten).
func ParseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	num, mult := v, int64(1)
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a size such as 4096, 64KiB or 16MiB")
	}
	return n * mult, nil
}
