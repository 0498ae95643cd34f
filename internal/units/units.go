// Package units reads and writes the values of settings and flags (byte
// counts, percentages, glob lists), so that every command spells them the
// same way.
package units

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

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
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a size such as 0, 4096, 64KiB or 16MiB")
	}
	return n * mult, nil
}

// ParsePercent reads a whole percentage from lo to hi, with or without
// a trailing %.
func ParsePercent(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("want a percentage from %d to %d", lo, hi)
	}
	return n, nil
}

// Human writes a byte count the way ls -h would: 1.5 GiB, 12 KiB, 300 B.
func Human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ParseGlobs reads a comma-separated list of glob patterns (path.Match
// syntax), refusing an empty or malformed one.
func ParseGlobs(v string) ([]string, error) {
	var out []string
	for _, pat := range strings.Split(v, ",") {
		pat = strings.TrimSpace(pat)
		if _, err := path.Match(pat, ""); err != nil || pat == "" {
			return nil, fmt.Errorf("bad glob pattern %q", pat)
		}
		out = append(out, pat)
	}
	return out, nil
}
