package integration

import (
	"bytes"
	"errors"
	"io"
	mrand "math/rand"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// Migrate files of awkward sizes, then read them back whole, at random
// offsets and by several readers at once, through the mount.
func TestMigrateThenReadBack(t *testing.T) {
	archives(t, func(t *testing.T, newDaemon func(...string) *testenv.Daemon) {
		// A small small-file limit so that the region/streaming path is exercised.
		d := newDaemon("--small-file", "1048576", "--window", "1048576")
		sizes := map[string]int64{"empty": 0, "one": 1, "page": 4095, "mib": 1<<20 + 3, "big": 24<<20 + 12345}
		want := map[string][32]byte{}
		os.Mkdir(d.M("dir"), 0o755)
		for name, size := range sizes {
			want[name] = writeRandom(t, d.M("dir/"+name), size)
		}
		d.MustCLI("migrate", "-r", d.M("dir"))
		for name, size := range sizes {
			e := state(t, d, "dir/"+name)
			if size == 0 {
				if e.State != "resident" {
					t.Fatalf("empty file: %+v", e)
				}
				continue
			}
			if e.State != "migrated" || e.Size != size || e.ResidentBytes != 0 {
				t.Fatalf("%s after migrate: %+v", name, e)
			}
			var st syscall.Stat_t
			syscall.Stat(d.B("dir/"+name), &st)
			if st.Blocks*512 > 4096 { // ext4 may keep the record in one xattr block
				t.Fatalf("%s: %d blocks still allocated", name, st.Blocks)
			}
		}
		testenv.DropCaches()

		// Random reads of the big stub first (before anything recalls it whole).
		big := d.M("dir/big")
		// The backing file of a stub holds no data: the mount must never return its zeros.
		if sumFile(t, d.B("dir/big")) == want["big"] {
			t.Fatal("backing file of a stub still has its data")
		}
		f, err := os.Open(big)
		if err != nil {
			t.Fatal(err)
		}
		rng := mrand.New(mrand.NewSource(1))
		offsets := []int64{sizes["big"] - 1, 0, 7 << 20}
		for range 20 {
			offsets = append(offsets, rng.Int63n(sizes["big"]))
		}
		reads := map[int64][]byte{}
		for _, off := range offsets {
			buf := make([]byte, 4096)
			n, err := f.ReadAt(buf, off)
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("read at %d: %v", off, err)
			}
			reads[off] = buf[:n]
		}
		f.Close()
		if e := state(t, d, "dir/big"); e.State != "migrated" || e.ResidentBytes == 0 || e.ResidentBytes >= sizes["big"] {
			t.Fatalf("random reads should recall regions, not the whole file: %+v", e)
		}

		// Several readers of every file at once.
		var wg sync.WaitGroup
		for name := range sizes {
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if got := sumFile(t, d.M("dir/"+name)); got != want[name] {
						t.Errorf("%s: checksum mismatch after recall", name)
					}
				}()
			}
		}
		wg.Wait()
		full, _ := os.ReadFile(big)
		for off, b := range reads {
			if !bytes.Equal(b, full[off:off+int64(len(b))]) {
				t.Fatalf("random read at %d returned wrong bytes", off)
			}
		}
		for name := range sizes {
			if e := state(t, d, "dir/"+name); sizes[name] > 0 && e.State != "premigrated" || e.ResidentBytes != sizes[name] {
				t.Fatalf("%s after full read: %+v", name, e)
			}
		}
		// Premigrated files release without a new upload and read back again.
		d.MustCLI("migrate", "-r", d.M("dir"))
		testenv.DropCaches()
		if got := sumFile(t, big); got != want["big"] {
			t.Fatal("big: wrong bytes after a second migration")
		}
		// recall brings data back ahead of use.
		d.MustCLI("migrate", "-r", d.M("dir"))
		out := d.MustCLI("recall", "-r", d.M("dir"))
		if e := state(t, d, "dir/mib"); e.State != "premigrated" {
			t.Fatalf("recall left %+v (%s)", e, out)
		}
	})
}
