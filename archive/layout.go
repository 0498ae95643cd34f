package archive

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/stub"
)

// The layout of cascadefs's objects in an archive, in one place:
//
//	FS/INO/GEN        a migration's data (GEN: nanoseconds, "-", 12 random
//	                  hex digits: a key is never used twice, so a stale
//	                  copy is never taken for the current one)
//	FS/INO/GEN.sums   the chunk checksums of a file too large for its
//	                  record to hold them (their SHA-256 is in the record)
//	FS/INO/GEN.meta   the file as it was at upload: path, owner, mode,
//	                  times, extended attributes, record (package
//	                  namespace); what a rebuild needs to make its stub
//	.cascadefs-journal/FS/NANOS-SOURCE-RAND
//	                  a batch of namespace changes after uploads (renames,
//	                  deletions, undeletes), for a rebuild to replay
//	.cascadefs-scrub/FS
//	                  how far the periodic scrub got (package scrub)

// The companions of a data object, which go with it.
const (
	sumsSuffix = ".sums"
	metaSuffix = ".meta"
)

// ScrubStateKey names where the owner of filesystem fs keeps how far its
// periodic scrub got: in the archive, so a restarted or new owner resumes it.
func ScrubStateKey(fs string) string { return ScrubPrefix + fs }

// ScrubPrefix is where the scrub states are: outside FS/, like the journal.
const ScrubPrefix = ".cascadefs-scrub/"

// JournalPrefix is where the namespace journals of every filesystem are:
// outside FS/, so that no reconcile takes them for orphans.
const JournalPrefix = ".cascadefs-journal/"

// Key is the key of a migration's object.
type Key struct {
	FS  string
	Ino uint64 // the file's inode when it was migrated
	Gen string
}

// NewKey makes the key of a new migration of the file ino.
func NewKey(fs string, ino uint64) Key {
	var b [6]byte
	rand.Read(b[:])
	return Key{FS: fs, Ino: ino, Gen: fmt.Sprintf("%d-%s", time.Now().UnixNano(), hex.EncodeToString(b[:]))}
}

func (k Key) String() string { return fmt.Sprintf("%s/%d/%s", k.FS, k.Ino, k.Gen) }

// SumsKey names the checksum object of the object key.
func SumsKey(key string) string { return key + sumsSuffix }

// MetaKey names the object that describes the file the object key backs.
func MetaKey(key string) string { return key + metaSuffix }

// Part is what an object of a migration holds.
type Part int

const (
	Data Part = iota
	Sums      // the checksum object
	Meta      // the file's description
)

// Companions are the keys of the objects that go with the data object key.
func Companions(key string) []string { return []string{SumsKey(key), MetaKey(key)} }

// DataKeyOf is the key of the data object that key belongs to, and what
// key holds.
func DataKeyOf(key string) (data string, part Part) {
	if d, ok := strings.CutSuffix(key, sumsSuffix); ok {
		return d, Sums
	}
	if d, ok := strings.CutSuffix(key, metaSuffix); ok {
		return d, Meta
	}
	return key, Data
}

// JournalKey names a batch of namespace changes of filesystem fs written
// by source at t: keys sort by time.
func JournalKey(fs, source string, t time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s%s/%020d-%s-%s", JournalPrefix, fs, t.UnixNano(), source, hex.EncodeToString(b[:]))
}

// ParseKey reads a data object's key of the filesystem fs; false for a
// key that no migration of fs made.
func ParseKey(fs, key string) (Key, bool) {
	rest, found := strings.CutPrefix(key, fs+"/")
	ino, gen, slash := strings.Cut(rest, "/")
	n, err := strconv.ParseUint(ino, 10, 64)
	if !found || !slash || err != nil || gen == "" || strings.Contains(gen, "/") {
		return Key{}, false
	}
	return Key{FS: fs, Ino: n, Gen: gen}, true
}

// ReadSums reads a file's chunk checksums: from its record when it holds
// them, else from the checksum object, which must be exactly what the
// record's hash and count say.
func ReadSums(ctx context.Context, a Archive, rec *stub.Record) ([]uint32, error) {
	if rec.InlineSums() {
		return rec.Sums, nil
	}
	return ReadSumsOf(ctx, a, rec.SumsRef())
}

// ReadSumsOf reads and checks the checksum object ref names: from the
// first copy whose object is there and right.
func ReadSumsOf(ctx context.Context, a Archive, ref stub.SumsRef) ([]uint32, error) {
	var errs []error
	_, n := CopyOf(a, 0)
	for i := range n {
		c, _ := CopyOf(a, i)
		sums, err := readSumsOf(ctx, c, ref)
		if err == nil {
			return sums, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func readSumsOf(ctx context.Context, a Archive, ref stub.SumsRef) ([]uint32, error) {
	body, err := a.Get(ctx, SumsKey(ref.Key), 0, -1)
	if err != nil {
		return nil, fmt.Errorf("checksums of %s: %w", ref.Key, err)
	}
	defer body.Close()
	blob, err := io.ReadAll(io.LimitReader(body, 4*int64(ref.Count)+1))
	if err != nil {
		return nil, fmt.Errorf("checksums of %s: %w", ref.Key, err)
	}
	sums, err := stub.DecodeSums(ref, blob)
	if err != nil {
		return nil, fmt.Errorf("checksums of %s: %w", ref.Key, err)
	}
	return sums, nil
}
