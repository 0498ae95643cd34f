package archive

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cascadefs/cascadefs/stub"
)

func TestKeyLayout(t *testing.T) {
	k := NewKey("fs1", 42)
	if k2 := NewKey("fs1", 42); k2 == k {
		t.Fatalf("two migrations got one key %s", k)
	}
	got, ok := ParseKey("fs1", k.String())
	if !ok || got != k {
		t.Fatalf("ParseKey(%s) = %+v %v", k, got, ok)
	}
	if data, part := DataKeyOf(SumsKey(k.String())); part != Sums || data != k.String() {
		t.Fatalf("DataKeyOf(SumsKey) = %s %v", data, part)
	}
	if data, part := DataKeyOf(MetaKey(k.String())); part != Meta || data != k.String() {
		t.Fatalf("DataKeyOf(MetaKey) = %s %v", data, part)
	}
	if data, part := DataKeyOf(k.String()); part != Data || data != k.String() {
		t.Fatalf("DataKeyOf(data key) = %s %v", data, part)
	}
	for _, bad := range []string{"fs2/42/1-ab", "fs1/x/1-ab", "fs1/42", "fs1/42/", "fs1/42/a/b", "fs1", ".clock"} {
		if k, ok := ParseKey("fs1", bad); ok {
			t.Errorf("ParseKey(%q) = %+v", bad, k)
		}
	}
}

// ReadSums takes the checksum object only when it is exactly what the
// record names: its hash and its length.
func TestReadSums(t *testing.T) {
	ctx := context.Background()
	a, err := Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sums := make([]uint32, stub.InlineSumsMax+1)
	for i := range sums {
		sums[i] = uint32(i * 7)
	}
	rec := &stub.Record{Key: NewKey("fs1", 7).String(), ChunkSize: stub.DefaultChunkSize, Size: int64(len(sums)) * stub.DefaultChunkSize}
	blob := rec.SetSums(sums)
	if blob == nil {
		t.Fatal("checksums of a large file kept in the record")
	}
	put := func(b []byte) {
		if _, err := a.Put(ctx, SumsKey(rec.Key), bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ReadSums(ctx, a, rec); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing checksum object: %v", err)
	}
	put(blob)
	got, err := ReadSums(ctx, a, rec)
	if err != nil || len(got) != len(sums) || got[9] != sums[9] {
		t.Fatalf("ReadSums: %v", err)
	}
	for _, bad := range [][]byte{append(bytes.Clone(blob), 0), blob[:len(blob)-4], append([]byte{1}, blob[1:]...)} {
		put(bad)
		if _, err := ReadSums(ctx, a, rec); !errors.Is(err, stub.ErrCorrupt) {
			t.Errorf("a checksum object of %d bytes, not the recorded one: %v", len(bad), err)
		}
	}
	small := &stub.Record{Key: "fs1/8/1-ab"}
	small.SetSums([]uint32{1, 2})
	if got, err := ReadSums(ctx, a, small); err != nil || len(got) != 2 {
		t.Fatalf("inline checksums: %v %v", got, err)
	}
}
