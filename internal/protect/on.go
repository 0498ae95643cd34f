//go:build failpoints

package protect

import (
	"fmt"
	"os"
	"slices"
)

// Enabled: protections can be switched off in this build.
const Enabled = true

var off = os.Getenv("CASCADEFS_PROTECTION_OFF")

func init() {
	if off != "" && !slices.ContainsFunc(All, func(p Protection) bool { return p.Name == off }) {
		fmt.Fprintf(os.Stderr, "cascadefs: CASCADEFS_PROTECTION_OFF=%q: no such protection\n", off)
		os.Exit(2)
	}
	if off != "" {
		fmt.Fprintf(os.Stderr, "cascadefs: protection %s is OFF (test build)\n", off)
	}
}

// Off reports whether protection name is switched off.
func Off(name string) bool { return off == name }
