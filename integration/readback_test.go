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
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
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

// A user's lock of a whole stub (through the mount) must not reach the
// bytes where the daemon keeps its own locks: a recall waiting for a
// user's write lock would hang its readers. Locks starting there are
// refused; a whole-file lock still reads back as one.
func TestUserLocksStayOffReservedBytes(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil)
	d.Start()
	want := writeRandom(t, d.M("f"), 3<<20)
	d.MustCLI("migrate", d.M("f"))
	locker, err := os.OpenFile(d.M("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	whole := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(locker.Fd(), unix.F_OFD_SETLK, &whole); err != nil {
		t.Fatalf("lock the whole file: %v", err)
	}
	got := make(chan [32]byte, 1)
	go func() { got <- sumFile(t, d.M("f")) }()
	select {
	case sum := <-got:
		if sum != want {
			t.Fatal("wrong bytes")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a read of a stub locked whole by a user hangs")
	}
	other, err := os.Open(d.M("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	q := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(other.Fd(), unix.F_OFD_GETLK, &q); err != nil {
		t.Fatal(err)
	}
	if q.Type != unix.F_WRLCK || q.Start != 0 || q.Len != 0 {
		t.Fatalf("the user's whole-file lock reads back as %+v", q)
	}
	high := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: stub.ReservedLocks, Len: 1}
	if err := unix.FcntlFlock(other.Fd(), unix.F_OFD_SETLK, &high); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("a lock in the reserved bytes: %v, want EINVAL", err)
	}
}
