package recall_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/recall"
	"github.com/cascadefs/cascadefs/seal"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// markedData is size random bytes with a marker every 64 KiB, and a hole
// of 1 MiB (whole chunks: left out of the object) after the first MiB.
func markedData(size int64, marker []byte) []byte {
	data := make([]byte, size)
	rand.Read(data)
	for off := int64(0); off+int64(len(marker)) <= size; off += 64 << 10 {
		copy(data[off:], marker)
	}
	clear(data[1<<20 : 2<<20])
	return data
}

// migratedSealed migrates data, sealed with keys, in chunks of chunk bytes.
func migratedSealed(t *testing.T, data []byte, chunk int64, keys *seal.Keyring) (root, archDir string, rec *stub.Record, ino uint64) {
	t.Helper()
	root, archDir = t.TempDir(), t.TempDir()
	arch, err := archive.Open("file://" + archDir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(root, "f"))
	if err != nil {
		t.Fatal(err)
	}
	// Written around the hole, so the hole stays one.
	f.WriteAt(data[:1<<20], 0)
	f.WriteAt(data[2<<20:], 2<<20)
	f.Close()
	m := migrate.New(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.OpenGate{}, fakes.KeptGarbage{}, migrate.Config{FS: "t", ChunkSize: chunk, ReleaseWait: 5 * time.Second}, slog.Default())
	m.Keys = keys
	if _, err := m.Migrate(context.Background(), "f", 0, false); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(filepath.Join(root, "f"), unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if rec, err = stub.ReadRecord(fd); err != nil || rec == nil {
		t.Fatalf("record: %v", err)
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	return root, archDir, rec, st.Ino
}

// Sealed uploads: the object holds no plaintext and is as long as the
// record says; its checksums check without the key (scrub, repair); a
// ranged read fetches and opens only its chunks; a full read gives the
// bytes back; without the key, or with another, a recall fails with a
// sentence that names the key; a flipped byte is an integrity error.
func TestSealedObjects(t *testing.T) {
	marker := []byte("PLAINTEXT-MARKER-0123456789")
	keys, err := seal.Parse("keys", []byte(seal.NewKey()))
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int64{stub.DefaultChunkSize, 4096} { // 4096: checksums in their own object
		size := int64(3<<20 + 5)
		data := markedData(size, marker)
		root, archDir, rec, ino := migratedSealed(t, data, chunk, keys)
		if !rec.Sealed || rec.KeyID != keys.Current().ID || len(rec.Holes) == 0 {
			t.Fatalf("chunk %d: record %+v", chunk, rec)
		}
		if chunk == 4096 && rec.InlineSums() {
			t.Fatal("the small chunks' checksums are inline")
		}
		obj, err := os.ReadFile(filepath.Join(archDir, rec.Key))
		if err != nil || int64(len(obj)) != rec.PackedSize() {
			t.Fatalf("object: %d bytes, want %d: %v", len(obj), rec.PackedSize(), err)
		}
		filepath.Walk(archDir, func(p string, info os.FileInfo, err error) error {
			if b, _ := os.ReadFile(p); err == nil && !info.IsDir() && bytes.Contains(b, marker) {
				t.Errorf("plaintext in the archive: %s", p)
			}
			return nil
		})
		arch, _ := archive.Open("file://" + archDir)
		sums, err := archive.ReadSums(context.Background(), arch, rec)
		if err != nil {
			t.Fatal(err)
		}
		if err := archive.CheckedCopy(io.Discard, bytes.NewReader(obj), rec, sums); err != nil {
			t.Fatalf("the sealed object does not check without the key: %v", err)
		}

		for _, tc := range []struct {
			name string
			keys *seal.Keyring
			want string
		}{
			{"no key file", nil, "no encryption-key-file is set"},
			{"another key", must(seal.Parse("other", []byte(seal.NewKey()))), "which the key file other does not hold"},
		} {
			m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{}, recall.Config{SmallFile: 1, Window: 1 << 20, MaxWindow: 256 << 20}, slog.Default())
			m.Keys = tc.keys
			err := m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: 4096})
			m.Close()
			if !errors.Is(err, seal.ErrNoKey) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), seal.ID(rec.KeyID).String()) {
				t.Errorf("chunk %d, %s: %v", chunk, tc.name, err)
			}
		}

		m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{}, recall.Config{SmallFile: 1, Window: 64 << 10, MaxWindow: 256 << 20}, slog.Default())
		m.Keys = keys
		at := int64(2<<20 + 3*4096 + 17)
		if err := m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: at, Length: 4096}); err != nil {
			t.Fatalf("chunk %d: ranged read: %v", chunk, err)
		}
		f, _ := os.Open(filepath.Join(root, "f"))
		got := make([]byte, 4096)
		f.ReadAt(got, at)
		if !bytes.Equal(got, data[at:at+4096]) {
			t.Fatalf("chunk %d: ranged read gave wrong bytes", chunk)
		}
		if hole, _ := stub.FirstHole(int(f.Fd()), 0, size); hole != 0 {
			t.Fatalf("chunk %d: a ranged read at %d fetched the head too", chunk, at)
		}
		if err := m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 0, Length: size}); err != nil {
			t.Fatalf("chunk %d: full read: %v", chunk, err)
		}
		m.Close()
		all, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(all, data) {
			t.Fatalf("chunk %d: full read gave wrong bytes", chunk)
		}
	}

	// A flipped byte: the chunk's checksum (of the sealed bytes) fails.
	data := markedData(3<<20, marker)
	root, archDir, rec, ino := migratedSealed(t, data, stub.DefaultChunkSize, keys)
	p := filepath.Join(archDir, rec.Key)
	obj, _ := os.ReadFile(p)
	obj[len(obj)-100] ^= 1
	os.WriteFile(p, obj, 0o600)
	arch, _ := archive.Open("file://" + archDir)
	m := recall.NewManager(fakes.Root(t, root), arch, &dmapi.Rights{}, fakes.KeptGarbage{}, recall.Config{SmallFile: 1, Window: 1 << 20, MaxWindow: 256 << 20}, slog.Default())
	m.Keys = keys
	defer m.Close()
	err = m.Handle(context.Background(), &dmapi.Event{Type: dmapi.Read, FS: "t", Path: "f", Ino: ino, Offset: 3<<20 - 10, Length: 10})
	if !errors.Is(err, recall.ErrIntegrity) {
		t.Fatalf("a flipped byte of a sealed object: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
