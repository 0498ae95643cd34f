package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMissingHelper is run by TestMissingFailsUnderMakeTest in a child
// process; on its own it does nothing.
func TestMissingHelper(t *testing.T) {
	if os.Getenv("CASCADEFS_MISSING_HELPER") != "1" {
		return
	}
	Missing(t, "no such thing on this machine")
}

// Under `make test` (CASCADEFS_REQUIRE_ALL=1) a missing prerequisite fails
// the test; by hand it skips.
func TestMissingFailsUnderMakeTest(t *testing.T) {
	for _, strict := range []string{"1", ""} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingHelper$", "-test.v")
		cmd.Env = append(os.Environ(), "CASCADEFS_MISSING_HELPER=1", "CASCADEFS_REQUIRE_ALL="+strict, "CASCADEFS_REQUIRE_MINIO=")
		out, err := cmd.CombinedOutput()
		switch {
		case strict == "1" && (err == nil || !strings.Contains(string(out), "missing prerequisite")):
			t.Errorf("strict: want a failure, got %v:\n%s", err, out)
		case strict == "" && (err != nil || !strings.Contains(string(out), "SKIP")):
			t.Errorf("by hand: want a skip, got %v:\n%s", err, out)
		}
	}
}
