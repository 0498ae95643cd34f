package archive

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// failing takes some bytes of a Put, then fails.
type failing struct {
	Archive
	after int64
}

var errBroken = errors.New("broken copy")

func (f failing) Put(ctx context.Context, key string, r io.Reader, size int64) (ObjectInfo, error) {
	io.CopyN(io.Discard, r, f.after)
	return ObjectInfo{}, errBroken
}

func TestCopiesAllOrNothing(t *testing.T) {
	ctx := context.Background()
	a, _ := NewDir(t.TempDir())
	b, _ := NewDir(t.TempDir())
	data := bytes.Repeat([]byte("cascadefs"), 100000)

	c := NewCopies(a, failing{b, 1000})
	if _, err := c.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); !errors.Is(err, errBroken) {
		t.Fatalf("a Put that one copy refused: %v", err)
	}

	c = NewCopies(a, b)
	if _, err := c.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	for i, x := range []Archive{a, b} {
		body, err := x.Get(ctx, "k", 0, -1)
		if err != nil {
			t.Fatalf("copy %d: %v", i+1, err)
		}
		got, _ := io.ReadAll(body)
		body.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("copy %d holds other bytes", i+1)
		}
	}
	// One copy without it: Stat fails (a release would wait), Get reads the other.
	a.Delete(ctx, "k")
	if _, err := c.Stat(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat with one copy missing: %v", err)
	}
	body, err := c.Get(ctx, "k", 0, 9)
	if err != nil {
		t.Fatalf("Get with the first copy missing: %v", err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if string(got) != "cascadefs" {
		t.Fatalf("Get read %q", got)
	}
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete left the second copy: %v", err)
	}
	if err := Validate("file:///a file:///a"); err == nil {
		t.Fatal("one URL given twice was taken as two copies")
	}
}
