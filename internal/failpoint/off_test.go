//go:build !failpoints

package failpoint

import "testing"

// Without -tags failpoints no point can act, whatever is asked.
func TestNotInThisBuild(t *testing.T) {
	if err := Setup(MigrateBeforePunch+"=kill", ""); err == nil {
		t.Fatal("Setup accepted a point in a build without failpoints")
	}
	for _, n := range All {
		if err := Hit(n); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
	}
}
