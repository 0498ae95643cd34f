package scrub

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cascadefs/cascadefs/internal/beneath"
)

// The walk meets files in the order compare gives, so a run resumed
// after a file skips exactly the files before it.
func TestWalkResumesAfterAFile(t *testing.T) {
	dir := t.TempDir()
	files := []string{"a/b", "a.txt", "a/c/d", "b", "a/c.x", "z/y/x"}
	for _, f := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	root, err := beneath.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	s := &Scrubber{Root: root}
	seen := func(after string) []string {
		var out []string
		s.walk(context.Background(), ".", after, func(rel string) error { out = append(out, rel); return nil })
		return out
	}
	all := seen("")
	want := []string{"a/b", "a/c/d", "a/c.x", "a.txt", "b", "z/y/x"}
	if !slices.Equal(all, want) {
		t.Fatalf("walk order %v, want %v", all, want)
	}
	if !slices.IsSortedFunc(all, compare) {
		t.Fatalf("compare does not order the walk: %v", all)
	}
	for i, after := range all {
		if got := seen(after); !slices.Equal(got, all[i+1:]) {
			t.Errorf("after %s: %v, want %v", after, got, all[i+1:])
		}
	}
}
