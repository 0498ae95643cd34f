package integration

import (
	"bytes"
	"errors"
	"fmt"
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
			if e := stateAfterRead(t, d, "dir/"+name); sizes[name] > 0 && e.State != "premigrated" || e.ResidentBytes != sizes[name] {
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

// A sparse file keeps its holes: they are not uploaded, a recall leaves
// them holes, and SEEK_HOLE through the mount finds them on the stub too.
// (A 64 MiB file with 2 MiB of data took 64 MiB in the archive and on
// disk after one read.)
func TestSparseFileKeepsItsHoles(t *testing.T) {
	archives(t, func(t *testing.T, newDaemon func(...string) *testenv.Daemon) {
		d := newDaemon()
		const size, mib = 64 << 20, 1 << 20
		f, err := os.Create(d.M("vm.img"))
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, size)
		rng := mrand.New(mrand.NewSource(64))
		for _, off := range []int{0, 40 * mib} {
			rng.Read(want[off : off+mib])
			if _, err := f.WriteAt(want[off:off+mib], int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		d.MustCLI("migrate", d.M("vm.img"))
		if got := testenv.ArchiveBytes(t, d.Archive, d.Env); got > 3*mib {
			t.Fatalf("the archive holds %d bytes for 2 MiB of data", got)
		}
		testenv.DropCaches()
		stub, err := os.Open(d.M("vm.img"))
		if err != nil {
			t.Fatal(err)
		}
		defer stub.Close()
		if hole, err := unix.Seek(int(stub.Fd()), 0, unix.SEEK_HOLE); err != nil || hole != mib {
			t.Fatalf("SEEK_HOLE on the stub: %d %v, want %d", hole, err, mib)
		}
		if data, err := unix.Seek(int(stub.Fd()), mib, unix.SEEK_DATA); err != nil || data != 40*mib {
			t.Fatalf("SEEK_DATA on the stub: %d %v, want %d", data, err, 40*mib)
		}
		stub.Seek(0, io.SeekStart)
		got, err := io.ReadAll(stub)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read back: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
		}
		if e := stateAfterRead(t, d, "vm.img"); e.State != "premigrated" {
			t.Fatalf("after a whole read: %+v", e)
		}
		var st syscall.Stat_t
		syscall.Stat(d.B("vm.img"), &st)
		if st.Blocks*512 > 3*mib {
			t.Fatalf("%d bytes allocated after the recall of 2 MiB of data", st.Blocks*512)
		}
		// A write into a hole makes the file resident; its holes stay.
		d.MustCLI("migrate", d.M("vm.img"))
		w, err := os.OpenFile(d.M("vm.img"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		copy(want[20*mib:], "written into a hole")
		if _, err := w.WriteAt([]byte("written into a hole"), 20*mib); err != nil {
			t.Fatal(err)
		}
		w.Close()
		testenv.DropCaches()
		if got, err := os.ReadFile(d.M("vm.img")); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after a write into a hole: equal %v, %v", bytes.Equal(got, want), err)
		}
		syscall.Stat(d.B("vm.img"), &st)
		if st.Blocks*512 > 4*mib {
			t.Fatalf("%d bytes allocated after a write into a hole", st.Blocks*512)
		}
	})
}

// Random sparse files against a model: data runs at random places and
// sizes (some inside a chunk, some across chunk edges), migrated, read in
// random pieces (partial recalls), written into, migrated again, and read
// whole; every byte must match, whatever holes were kept.
func TestSparseFilesAgainstAModel(t *testing.T) {
	d := testenv.NewDaemon(t, "", nil, "--small-file", "0")
	d.Start()
	rng := mrand.New(mrand.NewSource(20261130))
	const chunk = 256 << 10
	sparse := 0 // rounds whose file had hole runs
	defer func() {
		if !t.Failed() && sparse < 6 {
			t.Errorf("only %d of 12 files had hole runs: the test did not test them", sparse)
		}
	}()
	for round := range 12 {
		name := fmt.Sprintf("s%d", round)
		size := int64(rng.Intn(40*chunk) + 1)
		model := make([]byte, size)
		f, err := os.Create(d.M(name))
		if err != nil {
			t.Fatal(err)
		}
		for range rng.Intn(6) + 1 {
			off := rng.Int63n(size)
			n := min(int64(rng.Intn(3*chunk)+1), size-off)
			rng.Read(model[off : off+n])
			if _, err := f.WriteAt(model[off:off+n], off); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		check := func(what string) {
			t.Helper()
			r, err := os.Open(d.M(name))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			for range 5 { // random pieces first: partial recalls
				off := rng.Int63n(size)
				buf := make([]byte, min(int64(rng.Intn(2*chunk)+1), size-off))
				if _, err := r.ReadAt(buf, off); err != nil || !bytes.Equal(buf, model[off:off+int64(len(buf))]) {
					t.Fatalf("round %d %s: read of %d at %d wrong (%v)", round, what, len(buf), off, err)
				}
			}
			all, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(all, model) {
				t.Fatalf("round %d %s: whole read wrong (%d bytes, %v)", round, what, len(all), err)
			}
		}
		if b, err := os.Open(d.B(name)); err == nil {
			if runs, _ := stub.HoleRuns(int(b.Fd()), size, chunk); len(runs) > 0 {
				sparse++
			}
			b.Close()
		}
		d.MustCLI("migrate", d.M(name))
		testenv.DropCaches()
		check("after migrate")
		d.MustCLI("migrate", d.M(name))
		w, err := os.OpenFile(d.M(name), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		off := rng.Int63n(size)
		n := min(int64(rng.Intn(chunk)+1), size-off)
		rng.Read(model[off : off+n])
		if _, err := w.WriteAt(model[off:off+n], off); err != nil {
			t.Fatal(err)
		}
		w.Close()
		check("after a write")
		d.MustCLI("migrate", d.M(name))
		testenv.DropCaches()
		check("after a second migrate")
	}
}
