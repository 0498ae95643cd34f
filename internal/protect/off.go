//go:build !failpoints

package protect

// Enabled: protections can be switched off in this build.
const Enabled = false

// Off is always false outside test builds.
func Off(string) bool { return false }
