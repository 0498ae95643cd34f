package stub

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"golang.org/x/sys/unix"
)

// Sparse files: a run of whole chunks that is a hole in the file when it
// is copied is left out of the archive object, and stays a hole after a
// recall. Offsets in the object ("packed") skip those runs; inside a run
// of data chunks, file and object offsets move together.

// HoleRuns finds the runs of whole chunks of fd's first size bytes that
// are holes, and keeps the longest MaxHoleRuns (the others are copied as
// zeros). The file must not change meanwhile (the copy's watch and
// commit check see to that).
func HoleRuns(fd int, size, chunk int64) ([]ChunkRun, error) {
	var runs []ChunkRun
	for off := int64(0); off < size; {
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		if hole >= size {
			break
		}
		data, err := unix.Seek(fd, hole, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // a hole to the end
		} else if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		data = min(data, size)
		// Whole chunks only; the last chunk may be short and end at size.
		first := (hole + chunk - 1) / chunk
		end := data / chunk
		if data == size {
			end = int64(ChunkCount(size, chunk))
		}
		if end > first {
			runs = append(runs, ChunkRun{uint32(first), uint32(end)})
		}
		off = data
	}
	if len(runs) > MaxHoleRuns {
		slices.SortFunc(runs, func(a, b ChunkRun) int { return int(b.End-b.Start) - int(a.End-a.Start) })
		runs = runs[:MaxHoleRuns]
		slices.SortFunc(runs, func(a, b ChunkRun) int { return int(a.Start) - int(b.Start) })
	}
	return runs, nil
}

// chunkEnd is where chunk i ends in the file.
func (r *Record) chunkEnd(i uint32) int64 { return min(int64(i+1)*r.ChunkSize, r.Size) }

// holeAt returns the hole run holding offset off, if any.
func (r *Record) holeAt(off int64) (ChunkRun, bool) {
	c := uint32(off / r.ChunkSize)
	for _, h := range r.Holes {
		if h.Start <= c && c < h.End {
			return h, true
		}
	}
	return ChunkRun{}, false
}

// Packed is where the file's offset off lies in the object. off must
// start or end a chunk and not lie inside a hole run. In a sealed object
// each chunk is SealOverhead longer.
func (r *Record) Packed(off int64) int64 {
	c := uint32(off / r.ChunkSize)
	for _, h := range r.Holes {
		if h.End <= c {
			off -= r.chunkEnd(h.End-1) - int64(h.Start)*r.ChunkSize
		}
	}
	return r.sealed(off)
}

// sealed turns an offset of the plain packed data (that starts or ends a
// chunk) into one of the object as stored.
func (r *Record) sealed(plain int64) int64 {
	if !r.Sealed {
		return plain
	}
	chunks := (plain + r.ChunkSize - 1) / r.ChunkSize
	return plain + chunks*SealOverhead
}

// StoredLen is how many bytes of the object hold a chunk of n bytes.
func (r *Record) StoredLen(n int64) int64 {
	if r.Sealed {
		return n + SealOverhead
	}
	return n
}

// PackedSize is the size of the archive object.
func (r *Record) PackedSize() int64 {
	n := r.Size
	for _, h := range r.Holes {
		n -= r.chunkEnd(h.End-1) - int64(h.Start)*r.ChunkSize
	}
	return r.sealed(n)
}

// DataEnd is where the run of data chunks holding off ends: the start of
// the next hole run, or the size. One ranged GET of the object serves
// [off, DataEnd(off)).
func (r *Record) DataEnd(off int64) int64 {
	c := uint32(off / r.ChunkSize)
	for _, h := range r.Holes {
		if h.Start > c {
			return int64(h.Start) * r.ChunkSize
		}
	}
	return r.Size
}

// IsHole reports whether [off, end) lies inside one hole run.
func (r *Record) IsHole(off, end int64) bool {
	h, ok := r.holeAt(off)
	return ok && end <= r.chunkEnd(h.End-1)
}

// DataRuns lists the file ranges the object holds, in order.
func (r *Record) DataRuns() [][2]int64 {
	var runs [][2]int64
	off := int64(0)
	for _, h := range r.Holes {
		if s := int64(h.Start) * r.ChunkSize; s > off {
			runs = append(runs, [2]int64{off, s})
		}
		off = r.chunkEnd(h.End - 1)
	}
	if off < r.Size {
		runs = append(runs, [2]int64{off, r.Size})
	}
	return runs
}

// FirstMissing returns the first offset in [off, end) whose data is
// neither in the file nor meant to be a hole (rec's hole runs), or end:
// what a reader of a stub still needs recalled.
func FirstMissing(fd int, rec *Record, off, end int64) (int64, error) {
	for off < end {
		hole, err := FirstHole(fd, off, end)
		if err != nil || hole >= end {
			return hole, err
		}
		h, ok := rec.holeAt(hole)
		if !ok {
			return hole, nil
		}
		off = rec.chunkEnd(h.End - 1) // a hole the file had: nothing to fetch
	}
	return end, nil
}

// HoleEnd returns where the hole run holding off ends, if off is in one.
func (r *Record) HoleEnd(off int64) (int64, bool) {
	h, ok := r.holeAt(off)
	if !ok {
		return 0, false
	}
	return r.chunkEnd(h.End - 1), true
}

// DataReader reads what the object holds: the file's data runs, back to back.
func (r *Record) DataReader(file io.ReaderAt) io.Reader {
	var parts []io.Reader
	for _, run := range r.DataRuns() {
		parts = append(parts, io.NewSectionReader(file, run[0], run[1]-run[0]))
	}
	return io.MultiReader(parts...)
}

// ComputeSumsOf is ComputeSums for rec's file: the chunks of its hole
// runs are not read (their checksum is that of zeros; they are never
// fetched).
func ComputeSumsOf(file io.ReaderAt, rec *Record) ([]uint32, error) {
	sums := make([]uint32, 0, ChunkCount(rec.Size, rec.ChunkSize))
	buf := make([]byte, rec.ChunkSize)
	zeros := make([]byte, rec.ChunkSize)
	for off := int64(0); off < rec.Size; off += rec.ChunkSize {
		want := min(rec.ChunkSize, rec.Size-off)
		if rec.IsHole(off, off+want) {
			sums = append(sums, ChunkCRC(zeros[:want]))
			continue
		}
		got, err := file.ReadAt(buf[:want], off)
		if int64(got) != want {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("checksum at %d: %w", off, err)
		}
		sums = append(sums, ChunkCRC(buf[:want]))
	}
	return sums, nil
}
