// Package fakes holds the test doubles that unit tests of several packages
// share: they stand where a FUSE mount or a durable queue would.
package fakes

import (
	"context"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/beneath"
)

// OpenGate lets every commit and release through: no mount in unit tests.
type OpenGate struct{}

func (OpenGate) Commit(ino uint64, fn func() error) error     { return fn() }
func (OpenGate) CommitCopy(ino uint64, fn func() error) error { return fn() }
func (OpenGate) Release(ctx context.Context, ino uint64, wait time.Duration, fn func(confirm func() error) error) error {
	return fn(func() error { return nil })
}

// KeptGarbage records nothing: no object becomes garbage in unit tests.
type KeptGarbage struct{}

func (KeptGarbage) Prepare(fd int, rel string, key string, _ dmapi.Fate) (string, error) {
	return key, nil
}
func (KeptGarbage) Commit(token string) {}
func (KeptGarbage) Abort(token string)  {}

// Root opens dir as a backing tree, closed when the test ends.
func Root(tb testing.TB, dir string) *beneath.Root {
	tb.Helper()
	r, err := beneath.Open(dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}
