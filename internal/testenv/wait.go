package testenv

import (
	"testing"
	"time"
)

// WaitFor polls cond every 20 ms until it holds, and fails the test with
// what was awaited once limit has passed.
func WaitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
