//go:build !failpoints

package failpoint

import (
	"errors"
	"fmt"
	"os"
)

// Enabled: this build has failpoints.
const Enabled = false

func init() {
	if spec := os.Getenv("CASCADEFS_FAILPOINTS"); spec != "" {
		fmt.Fprintf(os.Stderr, "cascadefs: CASCADEFS_FAILPOINTS=%q ignored: failpoints are compiled only into test builds (-tags failpoints)\n", spec)
	}
}

// errNotBuilt: Setup in a build without failpoints.
var errNotBuilt = errors.New("failpoints are compiled only into test builds (-tags failpoints)")

// Setup turns points on in test builds; here it accepts only the empty list.
func Setup(spec, pauseDir string) error {
	if spec != "" {
		return errNotBuilt
	}
	return nil
}

// Hit does nothing in a build without failpoints.
func Hit(string) error { return nil }
