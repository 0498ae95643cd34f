package stub

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// State is the HSM state of a file.
type State uint8

const (
	// Resident: no archive copy, or a stale one. Files without a record are resident.
	Resident State = 0
	// Premigrated: the data is local and a verified archive copy exists.
	Premigrated State = 1
	// Migrated: some or all of the data lives only in the archive; the
	// regions that are holes in the backing file are in the archive.
	Migrated State = 2
)

func (s State) String() string {
	switch s {
	case Resident:
		return "resident"
	case Premigrated:
		return "premigrated"
	case Migrated:
		return "migrated"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// InlineSumsMax is the largest chunk count whose checksums are kept in the
// record itself; larger files keep them in the archive beside the object
// (archive.SumsKey) and the record holds their SHA-256.
const InlineSumsMax = 256

// Record is the stub record. It describes the archive copy of the file's
// data as it was when the copy was made.
type Record struct {
	State      State
	Key        string // archive object key, unique per migration
	ETag       string // archive's ETag or version of the object
	Size       int64  // file size at copy time
	MtimeNs    int64  // file mtime at copy time (detects a change since)
	Ino        uint64 // backing inode at copy time
	ChunkSize  int64  // bytes per checksummed chunk
	MigratedAt int64  // unix seconds when the copy was made
	// Sums holds the CRC-32C of each chunk when they fit inline.
	Sums []uint32
	// SumsHash is the SHA-256 of the external checksum object (when Sums is nil).
	SumsHash  [32]byte
	SumsCount uint32 // number of chunks (always set)
	// Holes are runs of chunks that were holes in the file when it was
	// copied: not in the object (which holds the other chunks back to
	// back), never fetched, and holes again after a recall.
	Holes []ChunkRun
	// Sealed: the object holds each chunk encrypted (package seal) with
	// the archive key KeyID and the upload's Salt, SealOverhead bytes
	// longer than the chunk; the checksums are of the sealed chunks.
	Sealed bool
	KeyID  [8]byte
	Salt   [16]byte
	// Imported: the data is an object cascadefs did not write (cascadefs
	// import), OriginKey in the bucket OriginBucket of the first copy's
	// S3 service, bound to it by ETag; cascadefs never deletes it. Key
	// still names where cascadefs keeps the file's own objects (its
	// checksums). Unverified: no checksums yet (made at the first full
	// recall); the bytes are trusted by the ETag alone.
	Imported     bool
	Unverified   bool
	OriginBucket string
	OriginKey    string
}

// SealOverhead is what sealing adds to each chunk (an AES-GCM tag).
const SealOverhead = 16

// ChunkRun is the chunks [Start, End) of a file.
type ChunkRun struct{ Start, End uint32 }

// MaxHoleRuns is how many hole runs a record keeps (the longest): the
// rest of a file's holes are copied as zeros, so the record stays small.
const MaxHoleRuns = 64

// Errors returned by Decode.
var (
	ErrNotStub   = errors.New("not a stub record")
	ErrCorrupt   = errors.New("corrupt stub record")
	ErrVersion   = errors.New("unsupported stub record version")
	crcTable     = crc32.MakeTable(crc32.Castagnoli)
	recordMagic  = [4]byte{'C', 'F', 'S', 'R'}
	maxStringLen = 1024
)

// recordVersion is written for files without hole runs (readable by
// every release); recordVersionHoles adds them; recordVersionFlags adds
// flags after them (hole runs may be none) and what the flags need: the
// archive key and salt of a sealed object, the origin of an imported one.
const (
	recordVersion      = 1
	recordVersionHoles = 2
	recordVersionFlags = 3
)

// Flags of a version 3 record.
const (
	flagSealed     = 1 << 0
	flagImported   = 1 << 1
	flagUnverified = 1 << 2
	knownFlags     = flagSealed | flagImported | flagUnverified
)

// ChunkCount is the number of chunks of size chunk that cover size bytes.
func ChunkCount(size, chunk int64) uint32 {
	if size <= 0 || chunk <= 0 {
		return 0
	}
	return uint32((size + chunk - 1) / chunk)
}

// InlineSums reports whether the record carries the chunk checksums
// itself (or has none to carry: empty, or unverified).
func (r *Record) InlineSums() bool { return r.Sums != nil || r.SumsCount == 0 || r.Unverified }

// Validate checks the invariants a decoded or freshly built record must hold.
func (r *Record) Validate() error {
	switch {
	case r.State != Premigrated && r.State != Migrated:
		return fmt.Errorf("%w: bad state %d", ErrCorrupt, r.State)
	case r.Key == "":
		return fmt.Errorf("%w: empty object key", ErrCorrupt)
	case r.Size < 0:
		return fmt.Errorf("%w: negative size", ErrCorrupt)
	case r.ChunkSize <= 0 || r.ChunkSize > 1<<30:
		return fmt.Errorf("%w: bad chunk size %d", ErrCorrupt, r.ChunkSize)
	case r.SumsCount != ChunkCount(r.Size, r.ChunkSize):
		return fmt.Errorf("%w: %d checksums for %d bytes", ErrCorrupt, r.SumsCount, r.Size)
	case r.Sums != nil && uint32(len(r.Sums)) != r.SumsCount:
		return fmt.Errorf("%w: inline checksum count", ErrCorrupt)
	case r.Sums == nil && r.SumsCount > 0 && r.SumsCount <= InlineSumsMax && !r.Unverified:
		return fmt.Errorf("%w: small file without inline checksums", ErrCorrupt)
	case r.Unverified && (!r.Imported || r.Sums != nil || r.SumsHash != [32]byte{}):
		return fmt.Errorf("%w: checksums of an unverified object", ErrCorrupt)
	case r.Imported && (r.Sealed || r.OriginBucket == "" || r.OriginKey == "" || len(r.OriginBucket) > maxStringLen || len(r.OriginKey) > maxStringLen):
		return fmt.Errorf("%w: imported object's origin", ErrCorrupt)
	case len(r.Holes) > MaxHoleRuns:
		return fmt.Errorf("%w: %d hole runs", ErrCorrupt, len(r.Holes))
	}
	var prev uint32
	for i, h := range r.Holes {
		if h.Start >= h.End || h.End > r.SumsCount || (i > 0 && h.Start <= prev) {
			return fmt.Errorf("%w: hole run %d-%d", ErrCorrupt, h.Start, h.End)
		}
		prev = h.End
	}
	return nil
}

// Encode serialises the record: magic, version, fields, CRC-32C of all before.
func (r *Record) Encode() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if len(r.Key) > maxStringLen || len(r.ETag) > maxStringLen {
		return nil, fmt.Errorf("stub record: key or etag too long")
	}
	b := make([]byte, 0, 96+len(r.Key)+len(r.ETag)+4*len(r.Sums))
	b = append(b, recordMagic[:]...)
	version := byte(recordVersion)
	if len(r.Holes) > 0 {
		version = recordVersionHoles
	}
	if r.Sealed || r.Imported {
		version = recordVersionFlags
	}
	b = append(b, version, byte(r.State))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Size))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.MtimeNs))
	b = binary.LittleEndian.AppendUint64(b, r.Ino)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.ChunkSize))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.MigratedAt))
	b = appendString(b, r.Key)
	b = appendString(b, r.ETag)
	b = binary.LittleEndian.AppendUint32(b, r.SumsCount)
	if r.Sums != nil {
		b = append(b, 0)
		for _, s := range r.Sums {
			b = binary.LittleEndian.AppendUint32(b, s)
		}
	} else {
		b = append(b, 1)
		b = append(b, r.SumsHash[:]...)
	}
	if version >= recordVersionHoles {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(r.Holes)))
		for _, h := range r.Holes {
			b = binary.LittleEndian.AppendUint32(b, h.Start)
			b = binary.LittleEndian.AppendUint32(b, h.End)
		}
	}
	if version == recordVersionFlags {
		var flags byte
		if r.Sealed {
			flags |= flagSealed
		}
		if r.Imported {
			flags |= flagImported
		}
		if r.Unverified {
			flags |= flagUnverified
		}
		b = append(b, flags)
		if r.Sealed {
			b = append(b, r.KeyID[:]...)
			b = append(b, r.Salt[:]...)
		}
		if r.Imported {
			b = appendString(b, r.OriginBucket)
			b = appendString(b, r.OriginKey)
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable)), nil
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// Decode parses and validates a record. It never trusts a record whose
// checksum or structure is wrong.
func Decode(b []byte) (*Record, error) {
	if len(b) < len(recordMagic) || [4]byte(b[:4]) != recordMagic {
		return nil, ErrNotStub
	}
	if len(b) < 10 {
		return nil, fmt.Errorf("%w: short", ErrCorrupt)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	version := body[4]
	if version < recordVersion || version > recordVersionFlags {
		return nil, fmt.Errorf("%w %d", ErrVersion, version)
	}
	d := decoder{buf: body[6:]}
	r := &Record{State: State(body[5])}
	r.Size = int64(d.u64())
	r.MtimeNs = int64(d.u64())
	r.Ino = d.u64()
	r.ChunkSize = int64(d.u64())
	r.MigratedAt = int64(d.u64())
	r.Key = d.str()
	r.ETag = d.str()
	r.SumsCount = d.u32()
	switch d.byte1() {
	case 0:
		if d.err == nil && uint64(r.SumsCount)*4 > uint64(len(d.buf)) {
			d.err = ErrCorrupt
			break
		}
		r.Sums = make([]uint32, 0, r.SumsCount)
		for i := uint32(0); i < r.SumsCount && d.err == nil; i++ {
			r.Sums = append(r.Sums, d.u32())
		}
	case 1:
		copy(r.SumsHash[:], d.take(32))
	default:
		d.err = ErrCorrupt
	}
	if version >= recordVersionHoles && d.err == nil {
		var n int
		if b := d.take(2); d.err == nil {
			n = int(binary.LittleEndian.Uint16(b))
		}
		// Version 2 is only written with runs; 3 may have none.
		if d.err == nil && ((n == 0 && version == recordVersionHoles) || n > MaxHoleRuns || 8*n > len(d.buf)) {
			d.err = ErrCorrupt
		}
		for i := 0; i < n && d.err == nil; i++ {
			r.Holes = append(r.Holes, ChunkRun{d.u32(), d.u32()})
		}
	}
	if version == recordVersionFlags && d.err == nil {
		flags := d.byte1()
		if d.err == nil && (flags&^knownFlags != 0 || flags&(flagSealed|flagImported) == 0) {
			d.err = fmt.Errorf("%w: flags %#x", ErrCorrupt, flags)
		}
		r.Sealed, r.Imported, r.Unverified = flags&flagSealed != 0, flags&flagImported != 0, flags&flagUnverified != 0
		if r.Sealed {
			copy(r.KeyID[:], d.take(8))
			copy(r.Salt[:], d.take(16))
		}
		if r.Imported {
			r.OriginBucket = d.str()
			r.OriginKey = d.str()
		}
	}
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%w: trailing bytes", ErrCorrupt)
	}
	if d.err != nil {
		if errors.Is(d.err, ErrCorrupt) {
			return nil, d.err
		}
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, d.err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.buf) {
		d.err = fmt.Errorf("%w: truncated", ErrCorrupt)
		return nil
	}
	v := d.buf[:n]
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) byte1() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0xff
}

func (d *decoder) str() string {
	if v := d.take(2); v != nil {
		return string(d.take(int(binary.LittleEndian.Uint16(v))))
	}
	return ""
}
