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

// SumsRef is what a record says of its external checksum object: the
// object it belongs to, how many chunks, and the object's SHA-256.
type SumsRef struct {
	Key   string
	Count uint32
	Hash  [32]byte
}

// SumsRef is the record's reference to its external checksum object.
func (r *Record) SumsRef() SumsRef { return SumsRef{Key: r.Key, Count: r.SumsCount, Hash: r.SumsHash} }

// DecodeSums checks an external checksum object against its reference
// and parses it.
func DecodeSums(ref SumsRef, b []byte) ([]uint32, error) {
	if sha256.Sum256(b) != ref.Hash {
		return nil, fmt.Errorf("%w: checksum object does not match its hash", ErrCorrupt)
	}
	if len(b) != 4*int(ref.Count) {
		return nil, fmt.Errorf("%w: checksum object has %d bytes for %d chunks", ErrCorrupt, len(b), ref.Count)
	}
	sums := make([]uint32, ref.Count)
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
