package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/seal"
	"golang.org/x/sys/unix"
)

// newMarker is a string found nowhere unless a test wrote it.
func newMarker() []byte {
	b := make([]byte, 12)
	rand.Read(b)
	return []byte("MARKER-" + hex.EncodeToString(b))
}

// writeMarked writes size random bytes with marker every 64 KiB and
// returns their SHA-256. With a hole, the second MiB is left a hole.
func writeMarked(t *testing.T, path string, size int64, marker []byte, hole bool) [32]byte {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	for off := int64(0); off+int64(len(marker)) <= size; off += 64 << 10 {
		copy(data[off:], marker)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if hole {
		clear(data[1<<20 : 2<<20])
		f.WriteAt(data[:1<<20], 0)
		_, err = f.WriteAt(data[2<<20:], 2<<20)
	} else {
		_, err = f.Write(data)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sha256Of(data)
}

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

// holding lists the files under dir whose bytes hold marker.
func holding(t *testing.T, dir string, marker []byte) []string {
	t.Helper()
	var found []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, marker) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// keyFile writes the archive keys into a new key file.
func keyFile(t *testing.T, keys ...string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "keys")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("# archive keys, the first seals\n" + strings.Join(keys, "\n") + "\n")
	f.Close()
	return f.Name()
}

// keyOf is the ID of the archive key that sealed the file at p (backing).
func keyOf(t *testing.T, p string) string {
	t.Helper()
	if rec := recordOf(t, p); rec.Sealed {
		return seal.ID(rec.KeyID).String()
	}
	return ""
}

func idOf(t *testing.T, key string) string {
	r, err := seal.Parse("k", []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return r.Current().ID.String()
}

// With encryption-key-file set, nothing a user wrote reaches the object
// store in the clear: not the data (full and ranged reads still give it
// back, holes too), not the names and attributes in the descriptions and
// the journal. A new key goes first and old files stay readable; a key
// file without the file's key, or none, gives EIO and a sentence that
// names the key; a rebuild needs the key file and works with it.
func TestSealedArchive(t *testing.T) {
	m := testenv.StartMinIO(t)
	d := testenv.NewDaemon(t, m.Bucket(t, "sealed"), m.EnvList())
	d.Start()
	// In the clear first: the scan finds a marker that is there.
	clearMarker := newMarker()
	sumClear := writeMarked(t, d.M("clear"), 1<<20, clearMarker, false)
	d.MustCLI("migrate", d.M("clear"))
	if len(holding(t, m.Data, clearMarker)) == 0 {
		t.Fatal("a marker uploaded in the clear is not found in MinIO's data directory: the scan below proves nothing")
	}
	d.Stop()

	keyA, keyB, keyC := seal.NewKey(), seal.NewKey(), seal.NewKey()
	d.Args = []string{"--encryption-key-file", keyFile(t, keyA)}
	d.Start()
	marker := newMarker()
	dir := "dir-" + string(marker)
	must(t, os.Mkdir(d.M(dir), 0o755))
	sums := map[string][32]byte{
		"big":    writeMarked(t, d.M("big"), 3<<20+5, marker, false),
		"sparse": writeMarked(t, d.M("sparse"), 4<<20, marker, true),
		"small":  writeMarked(t, d.M(dir+"/small"), 5000, marker, false),
	}
	must(t, unix.Setxattr(d.M("big"), "user.note", marker, 0))
	d.MustCLI("migrate", d.M("big"), d.M("sparse"), d.M(dir+"/small"))
	must(t, os.Rename(d.M(dir+"/small"), d.M(dir+"/renamed-"+string(marker)))) // into the journal
	sums[dir+"/renamed-"+string(marker)] = sums["small"]
	delete(sums, "small")
	testenv.DropCaches()
	// A ranged read first: it opens its chunks only.
	f, err := os.Open(d.M("big"))
	must(t, err)
	got := make([]byte, 4096)
	_, err = f.ReadAt(got, 2<<20+100)
	f.Close()
	must(t, err)
	for p, want := range sums {
		if sumFile(t, d.M(p)) != want {
			t.Errorf("%s reads other bytes", p)
		}
	}
	d.Stop() // the journal's last batch is written at the stop
	if found := holding(t, m.Data, marker); len(found) > 0 {
		t.Fatalf("plaintext in the object store: %v", found)
	}
	if k := keyOf(t, d.B("big")); k != idOf(t, keyA) {
		t.Fatalf("big sealed with key %q, want %q", k, idOf(t, keyA))
	}

	// A new key goes first; the old one still opens what it sealed.
	d.Args = []string{"--encryption-key-file", keyFile(t, keyB, keyA)}
	d.Start()
	sums["new"] = writeMarked(t, d.M("new"), 1<<20, marker, false)
	d.MustCLI("migrate", d.M("new"), d.M("big"))
	if k := keyOf(t, d.B("new")); k != idOf(t, keyB) || state(t, d, "new").SealedWith != k {
		t.Fatalf("new file sealed with key %q (ls says %q), want the new key %q", k, state(t, d, "new").SealedWith, idOf(t, keyB))
	}
	testenv.DropCaches()
	if sumFile(t, d.M("big")) != sums["big"] || sumFile(t, d.M("new")) != sums["new"] {
		t.Fatal("after a new key: files read other bytes")
	}
	d.MustCLI("migrate", d.M("big"), d.M("new"))
	d.Stop()

	// Without the file's key: EIO, and a sentence naming the key.
	for _, args := range [][]string{{"--encryption-key-file", keyFile(t, keyC)}, nil} {
		d.Args = args
		d.Start()
		testenv.DropCaches()
		if _, err := os.ReadFile(d.M("big")); !errors.Is(err, syscall.EIO) {
			t.Errorf("%v: read without the file's key: %v, want EIO", args, err)
		}
		_, errOut, err := d.CLI("recall", d.M("new"))
		want := "sealed with archive key " + idOf(t, keyB)
		if err == nil || !strings.Contains(errOut, want) {
			t.Errorf("%v: recall without the key: %v %q, want a sentence with %q", args, err, errOut, want)
		}
		if sumFile(t, d.M("clear")) != sumClear {
			t.Errorf("%v: a file uploaded in the clear reads other bytes", args)
		}
		d.Stop()
	}

	// A rebuild needs the key file for the descriptions and the journal.
	emptyDir(t, d.Backing)
	out, errOut, err := d.ArchiveCLI("rebuild", "--archive", d.Archive, "--name", "t1", d.Backing)
	if err == nil || !strings.Contains(errOut, "--encryption-key-file") {
		t.Fatalf("rebuild of a sealed archive without its key file: %v\n%s%s", err, out, errOut)
	}
	keys := keyFile(t, keyB, keyA)
	rep := rebuild(t, d, d.Backing, "--encryption-key-file", keys)
	if rep.Files != 5 || rep.NoMeta != 0 {
		t.Fatalf("rebuild report: %+v", rep)
	}
	d.Args = []string{"--encryption-key-file", keys}
	d.Start()
	for p, want := range sums {
		if sumFile(t, d.M(p)) != want {
			t.Errorf("%s reads other bytes after the rebuild", p)
		}
	}
	buf := make([]byte, 128)
	if n, err := unix.Getxattr(d.M("big"), "user.note", buf); err != nil || !bytes.Equal(buf[:n], marker) {
		t.Errorf("the rebuilt file's attribute: %q %v", buf[:max(n, 0)], err)
	}
}
