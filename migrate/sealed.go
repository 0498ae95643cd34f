package migrate

import (
	"fmt"
	"io"

	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
)

// sealingReader reads the object of a sealed record as it is stored:
// each data chunk of the file read once, sealed, and its checksum (of the
// sealed bytes, so that a scrub or a repair checks the archive without
// the key) noted on the way.
type sealingReader struct {
	file    io.ReaderAt
	rec     *stub.Record
	obj     *seal.Object
	runs    [][2]int64
	off     int64 // the next file offset to seal
	plain   []byte
	out     []byte
	pending []byte // sealed bytes not yet read
	sums    []uint32
}

func newSealingReader(file io.ReaderAt, rec *stub.Record, obj *seal.Object) *sealingReader {
	r := &sealingReader{file: file, rec: rec, obj: obj, runs: rec.DataRuns(),
		plain: make([]byte, rec.ChunkSize), out: make([]byte, 0, rec.StoredLen(rec.ChunkSize))}
	// Hole chunks are never fetched; their checksum is that of zeros, as
	// for a plain object.
	zeros := make([]byte, rec.ChunkSize)
	for off := int64(0); off < rec.Size; off += rec.ChunkSize {
		r.sums = append(r.sums, stub.ChunkCRC(zeros[:min(rec.ChunkSize, rec.Size-off)]))
	}
	if len(r.runs) > 0 {
		r.off = r.runs[0][0]
	}
	return r
}

func (r *sealingReader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if len(r.runs) == 0 {
			return 0, io.EOF
		}
		end := r.runs[0][1]
		n := min(r.rec.ChunkSize, end-r.off)
		if got, err := r.file.ReadAt(r.plain[:n], r.off); int64(got) != n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("read at %d: %w", r.off, err)
		}
		index := uint32(r.off / r.rec.ChunkSize)
		r.out = r.obj.Seal(r.out[:0], r.plain[:n], index)
		r.sums[index] = stub.ChunkCRC(r.out)
		r.pending = r.out
		if r.off += n; r.off >= end {
			if r.runs = r.runs[1:]; len(r.runs) > 0 {
				r.off = r.runs[0][0]
			}
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}
