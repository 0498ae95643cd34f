package stub

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A record with hole runs round-trips as version 2; one without stays
// version 1 (readable by older releases); bad runs are refused.
func TestRecordHoleRuns(t *testing.T) {
	r := sampleRecord(300)
	r.Holes = []ChunkRun{{1, 3}, {10, 300}}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if b[4] != recordVersionHoles {
		t.Fatalf("version %d", b[4])
	}
	got, err := Decode(b)
	if err != nil || len(got.Holes) != 2 || got.Holes[1] != (ChunkRun{10, 300}) {
		t.Fatalf("decode: %+v %v", got, err)
	}
	if b, _ := sampleRecord(3).Encode(); b[4] != recordVersion {
		t.Fatalf("a dense record is version %d", b[4])
	}
	for _, bad := range [][]ChunkRun{{{3, 3}}, {{5, 9}, {8, 12}}, {{5, 9}, {2, 4}}, {{1, 301}}} {
		r.Holes = bad
		if _, err := r.Encode(); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("hole runs %v accepted", bad)
		}
	}
}

// Offsets of the object and the file agree around hole runs, the last
// chunk short.
func TestPackedOffsets(t *testing.T) {
	c := int64(DefaultChunkSize)
	r := &Record{ChunkSize: c, Size: 10*c + 100, SumsCount: 11,
		Holes: []ChunkRun{{2, 4}, {7, 8}, {10, 11}}}
	if got, want := r.PackedSize(), 7*c; got != want {
		t.Fatalf("packed size %d, want %d", got, want)
	}
	for off, want := range map[int64]int64{0: 0, c + 5: c + 5, 4 * c: 2 * c, 6*c + 1: 4*c + 1, 8 * c: 5 * c, 9*c + 7: 6*c + 7} {
		if got := r.Packed(off); got != want {
			t.Errorf("Packed(%d) = %d, want %d", off, got, want)
		}
	}
	if got := r.DataEnd(5 * c); got != 7*c {
		t.Fatalf("DataEnd = %d", got)
	}
	if got := r.DataEnd(8 * c); got != 10*c {
		t.Fatalf("DataEnd before the last run = %d", got)
	}
	runs := r.DataRuns()
	want := [][2]int64{{0, 2 * c}, {4 * c, 7 * c}, {8 * c, 10 * c}}
	if len(runs) != len(want) {
		t.Fatalf("data runs %v", runs)
	}
	var total int64
	for i := range runs {
		if runs[i] != want[i] {
			t.Fatalf("data runs %v, want %v", runs, want)
		}
		total += runs[i][1] - runs[i][0]
	}
	if total != r.PackedSize() {
		t.Fatalf("data runs hold %d bytes, packed size %d", total, r.PackedSize())
	}
	if !r.IsHole(2*c, 4*c) || r.IsHole(2*c, 4*c+1) || !r.IsHole(10*c, 10*c+100) {
		t.Fatal("IsHole")
	}
}

// HoleRuns finds the whole-chunk holes of a real sparse file, and
// FirstMissing skips them once the file is all holes.
func TestHoleRunsOfASparseFile(t *testing.T) {
	c := int64(DefaultChunkSize)
	f, err := os.Create(filepath.Join(t.TempDir(), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{7}, 4096)
	for _, off := range []int64{0, 5*c + 100, 9 * c} { // chunks 0, 5, 9 hold data
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	size := 12*c + 10
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	runs, err := HoleRuns(fd, size, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []ChunkRun{{1, 5}, {6, 9}, {10, 13}}
	if len(runs) != len(want) || runs[0] != want[0] || runs[1] != want[1] || runs[2] != want[2] {
		t.Fatalf("hole runs %v, want %v", runs, want)
	}
	rec := &Record{ChunkSize: c, Size: size, SumsCount: ChunkCount(size, c), Holes: runs}
	if err := Punch(fd, 0, size); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct{ off, end, want int64 }{
		{0, size, 0}, {c, 5 * c, 5 * c}, {c, 6 * c, 5 * c}, {10 * c, size, size}, {6 * c, 9 * c, 9 * c},
	} {
		if got, err := FirstMissing(fd, rec, x.off, x.end); err != nil || got != x.want {
			t.Errorf("FirstMissing(%d, %d) = %d %v, want %d", x.off, x.end, got, err, x.want)
		}
	}
}

// In a sealed object each chunk, the last short one too, is SealOverhead
// longer; hole runs still take no room.
func TestPackedOffsetsSealed(t *testing.T) {
	c, o := int64(DefaultChunkSize), int64(SealOverhead)
	r := &Record{ChunkSize: c, Size: 10*c + 100, SumsCount: 11, Sealed: true,
		Holes: []ChunkRun{{2, 4}, {7, 8}, {10, 11}}}
	if got, want := r.PackedSize(), 7*c+7*o; got != want {
		t.Fatalf("packed size %d, want %d", got, want)
	}
	for off, want := range map[int64]int64{0: 0, c: c + o, 4 * c: 2*c + 2*o, 7 * c: 5*c + 5*o, 8 * c: 5*c + 5*o, 10 * c: 7*c + 7*o} {
		if got := r.Packed(off); got != want {
			t.Errorf("Packed(%d) = %d, want %d", off, got, want)
		}
	}
	tail := &Record{ChunkSize: c, Size: 2*c + 100, SumsCount: 3, Sealed: true}
	if got, want := tail.PackedSize(), 2*c+100+3*o; got != want || tail.Packed(tail.Size) != want {
		t.Fatalf("short last chunk: packed size %d, Packed(size) %d, want %d", got, tail.Packed(tail.Size), want)
	}
	if tail.StoredLen(100) != 100+o || (&Record{}).StoredLen(100) != 100 {
		t.Fatal("StoredLen")
	}
}
