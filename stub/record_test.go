package stub

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func sampleRecord(chunks int) *Record {
	r := &Record{State: Migrated, Key: "fs1/123-abc", ETag: "etag-1", Size: int64(chunks) * DefaultChunkSize,
		MtimeNs: 1700000000123456789, Ino: 42, ChunkSize: DefaultChunkSize, MigratedAt: 1700000000}
	sums := make([]uint32, chunks)
	for i := range sums {
		sums[i] = uint32(i*7919 + 1)
	}
	r.SetSums(sums)
	return r
}

func TestRecordRoundTrip(t *testing.T) {
	for _, chunks := range []int{0, 1, InlineSumsMax, InlineSumsMax + 1, 5000} {
		r := sampleRecord(chunks)
		b, err := r.Encode()
		if err != nil {
			t.Fatalf("%d chunks: encode: %v", chunks, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%d chunks: decode: %v", chunks, err)
		}
		b2, _ := got.Encode()
		if !bytes.Equal(b, b2) {
			t.Fatalf("%d chunks: round trip changed the record", chunks)
		}
		if got.Key != r.Key || got.Size != r.Size || got.State != r.State || got.SumsCount != r.SumsCount {
			t.Fatalf("%d chunks: got %+v want %+v", chunks, got, r)
		}
		if chunks > InlineSumsMax && (got.Sums != nil || got.SumsHash != r.SumsHash) {
			t.Fatalf("large record should carry a hash of external sums")
		}
	}
}

func TestRecordCorruptionDetected(t *testing.T) {
	b, err := sampleRecord(3).Encode()
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(b)
			c[i] ^= bit
			if _, err := Decode(c); err == nil {
				t.Fatalf("flip of bit %#x in byte %d not detected", bit, i)
			}
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := Decode(b[:n]); err == nil {
			t.Fatalf("truncation to %d bytes not detected", n)
		}
	}
}

func TestRecordRejectsInvalid(t *testing.T) {
	r := sampleRecord(2)
	r.Key = ""
	if _, err := r.Encode(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("empty key: got %v", err)
	}
	r = sampleRecord(2)
	r.Size = 10 * DefaultChunkSize // count no longer matches
	if _, err := r.Encode(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong sum count: got %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, n := range []int{0, 1, 3, 300} {
		b, _ := sampleRecord(n).Encode()
		f.Add(b)
	}
	sparse := sampleRecord(300)
	sparse.Holes = []ChunkRun{{1, 3}, {10, 300}}
	b, _ := sparse.Encode()
	f.Add(b)
	sealed := sampleRecord(3)
	sealed.Sealed, sealed.KeyID, sealed.Salt = true, [8]byte{1, 2}, [16]byte{3, 4}
	b, _ = sealed.Encode()
	f.Add(b)
	sealed.Holes = []ChunkRun{{1, 2}}
	b, _ = sealed.Encode()
	f.Add(b)
	b, _ = importedRecord().Encode()
	f.Add(b)
	f.Add([]byte("CFSR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must be valid and re-encode to the same bytes.
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded an invalid record: %v", err)
		}
		b2, err := r.Encode()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("decoded record does not re-encode: %v", err)
		}
	})
}

// A sealed record keeps its key and salt, with or without hole runs; a
// version 2 record without runs stays refused.
func TestSealedRecord(t *testing.T) {
	for _, holes := range [][]ChunkRun{nil, {{0, 1}}} {
		r := sampleRecord(3)
		r.Holes = holes
		r.Sealed, r.KeyID, r.Salt = true, [8]byte{1, 2, 3}, [16]byte{9, 8, 7}
		b, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		if err != nil || !got.Sealed || got.KeyID != r.KeyID || got.Salt != r.Salt || len(got.Holes) != len(holes) {
			t.Fatalf("holes %v: decoded %+v, %v", holes, got, err)
		}
	}
	plain, _ := sampleRecord(3).Encode()
	if got, err := Decode(plain); err != nil || got.Sealed {
		t.Fatalf("a plain record decodes as sealed: %v", err)
	}
}

func importedRecord() *Record {
	r := sampleRecord(300)
	r.Sums, r.SumsHash = nil, [32]byte{}
	r.Imported, r.Unverified, r.OriginBucket, r.OriginKey = true, true, "photos", "2021/a b.jpg"
	return r
}

// An imported record keeps its origin; unverified, it has no checksums;
// it is never sealed.
func TestImportedRecord(t *testing.T) {
	r := importedRecord()
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil || !got.Imported || !got.Unverified || got.OriginBucket != "photos" || got.OriginKey != "2021/a b.jpg" || !got.InlineSums() {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	got.SetSums(make([]uint32, got.SumsCount))
	got.Unverified = false
	if b, err := got.Encode(); err != nil {
		t.Fatalf("verified imported record: %v", err)
	} else if again, err := Decode(b); err != nil || again.Unverified || again.InlineSums() {
		t.Fatalf("verified imported record decoded %+v, %v", again, err)
	}
	for what, mutate := range map[string]func(*Record){
		"sealed":          func(r *Record) { r.Sealed = true },
		"no origin":       func(r *Record) { r.OriginKey = "" },
		"sums unverified": func(r *Record) { r.Sums = make([]uint32, r.SumsCount) },
		"unverified own":  func(r *Record) { r.Imported = false },
	} {
		r := importedRecord()
		mutate(r)
		if _, err := r.Encode(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: encoded (%v)", what, err)
		}
	}
}

func TestSumsExternal(t *testing.T) {
	r := sampleRecord(InlineSumsMax + 10)
	sums := make([]uint32, r.SumsCount)
	for i := range sums {
		sums[i] = uint32(i)
	}
	blob := r.SetSums(sums)
	got, err := DecodeSums(r.SumsRef(), blob)
	if err != nil || len(got) != len(sums) || got[7] != 7 {
		t.Fatalf("decode sums: %v", err)
	}
	blob[0] ^= 1
	if _, err := DecodeSums(r.SumsRef(), blob); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered sums accepted: %v", err)
	}
}

func TestPunchAndResidency(t *testing.T) {
	for _, size := range []int64{1, 4095, 4097, 3*DefaultChunkSize + 17} {
		p := filepath.Join(t.TempDir(), "f")
		data := bytes.Repeat([]byte{0xab}, int(size))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fd := int(f.Fd())
		if h, _ := FirstHole(fd, 0, size); h != size {
			t.Fatalf("size %d: resident file has a hole at %d", size, h)
		}
		if err := Punch(fd, 0, size); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		if st.Size != size || st.Blocks != 0 {
			t.Fatalf("size %d: after punch size=%d blocks=%d", size, st.Size, st.Blocks)
		}
		if h, _ := FirstHole(fd, 0, size); h != 0 {
			t.Fatalf("size %d: punched file reads as resident up to %d", size, h)
		}
		if n, _ := ResidentBytes(fd, size); n != 0 {
			t.Fatalf("size %d: %d resident bytes after punch", size, n)
		}
		f.Close()
	}
}

func TestRecordOnFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("x"), 0o644)
	f, _ := os.Open(p)
	defer f.Close()
	fd := int(f.Fd())
	if r, err := ReadRecord(fd); r != nil || err != nil {
		t.Fatalf("fresh file: %v %v", r, err)
	}
	want := sampleRecord(InlineSumsMax) // the largest inline record must fit an xattr
	// A record is bound to its file: one written for another inode is
	// refused.
	if err := WriteRecord(fd, want); !errors.Is(err, ErrForeign) {
		t.Fatalf("record of inode 42 written on another file: %v", err)
	}
	want.Ino = 0 // bound to the file it is written on
	if err := WriteRecord(fd, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRecord(fd)
	if err != nil || got.Key != want.Key {
		t.Fatalf("read back: %v %v", got, err)
	}
	// The same bytes copied onto another file are not a record there.
	q := filepath.Join(t.TempDir(), "copy")
	os.WriteFile(q, []byte("x"), 0o644)
	b := make([]byte, 4096)
	n, _ := unix.Fgetxattr(fd, XattrName, b)
	unix.Setxattr(q, XattrName, b[:n], 0)
	var fe *ForeignError
	if r, err := ReadRecordAt(q); r != nil || !errors.As(err, &fe) || fe.Rec.Key != want.Key {
		t.Fatalf("copied record: %v %v", r, err)
	}
	cf, _ := os.Open(q)
	defer cf.Close()
	if r, err := ReadRecord(int(cf.Fd())); r != nil || !errors.Is(err, ErrForeign) {
		t.Fatalf("copied record by descriptor: %v %v", r, err)
	}
	dir, _ := os.Open(filepath.Dir(q))
	defer dir.Close()
	if r, err := ReadRecordIn(int(dir.Fd()), "copy"); r != nil || !errors.Is(err, ErrForeign) {
		t.Fatalf("copied record by name: %v %v", r, err)
	}
	unix.Fsetxattr(fd, XattrName, []byte("CFSRgarbage"), 0)
	if _, err := ReadRecord(fd); !IsCorrupt(err) {
		t.Fatalf("garbage record: got %v", err)
	}
	if err := RemoveRecord(fd); err != nil {
		t.Fatal(err)
	}
	if r, err := ReadRecord(fd); r != nil || err != nil {
		t.Fatalf("after remove: %v %v", r, err)
	}
}
