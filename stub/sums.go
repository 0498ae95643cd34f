package stub

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// DefaultChunkSize is the unit of verification: each chunk of the archive
// copy has its own CRC-32C, so a partial recall is verified without reading
// the whole object. Small enough that a random 4 KiB read fetches little.
const DefaultChunkSize = 256 << 10

// ChunkCRC returns the CRC-32C of one chunk.
func ChunkCRC(b []byte) uint32 { return crc32.Checksum(b, crcTable) }

// ComputeSums reads size bytes of r and returns the CRC-32C of each chunk.
func ComputeSums(r io.ReaderAt, size, chunk int64) ([]uint32, error) {
	return ComputeSumsOf(r, &Record{Size: size, ChunkSize: chunk})
}

// EncodeSums serialises chunk checksums for the archive (little-endian uint32s).
func EncodeSums(sums []uint32) []byte {
	b := make([]byte, 0, 4*len(sums))
	for _, s := range sums {
		b = binary.LittleEndian.AppendUint32(b, s)
	}
	return b
}

// DecodeSums checks an external checksum object against the record and parses it.
func DecodeSums(r *Record, b []byte) ([]uint32, error) {
	if sha256.Sum256(b) != r.SumsHash {
		return nil, fmt.Errorf("%w: checksum object does not match its hash", ErrCorrupt)
	}
	if len(b) != 4*int(r.SumsCount) {
		return nil, fmt.Errorf("%w: checksum object has %d bytes for %d chunks", ErrCorrupt, len(b), r.SumsCount)
	}
	sums := make([]uint32, r.SumsCount)
	for i := range sums {
		sums[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return sums, nil
}

// SetSums stores sums in the record: inline when small, otherwise as a hash
// of the blob that the caller must put in the archive (returned, else nil).
func (r *Record) SetSums(sums []uint32) (external []byte) {
	r.SumsCount = uint32(len(sums))
	if len(sums) <= InlineSumsMax {
		r.Sums = sums
		return nil
	}
	blob := EncodeSums(sums)
	r.Sums = nil
	r.SumsHash = sha256.Sum256(blob)
	return blob
}
