package migrate

import (
	"context"
	"fmt"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/stub"
)

// BenchmarkScan walks a tree of CASCADEFS_SCAN_FILES files (default
// 1,000,000: 1000 directories of 1000 one-byte files, one in ten with a
// premigrated record) with the space monitor's scan, beside
// `find -printf` over the same tree in the same run, warm and cold.
//
//	go test -run '^$' -bench Scan -benchtime 1x -timeout 60m ./migrate
func BenchmarkScan(b *testing.B) {
	files := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("CASCADEFS_SCAN_FILES")); err == nil && v > 0 {
		files = v
	}
	root := b.TempDir()
	start := time.Now()
	makeTree(b, root, files)
	b.Logf("tree of %d files made in %s", files, time.Since(start).Round(time.Second))

	p := testPolicy()
	for i := 0; i < b.N; i++ {
		for _, cold := range []bool{false, true} {
			label := "warm"
			if cold {
				label = "cold"
			}
			if cold {
				dropCaches(b)
			}
			findTime, findRSS := runFind(b, root)
			if cold {
				dropCaches(b)
			}
			if cold {
				dropCaches(b)
			}
			usageTime, usageHeap := peakHeap(func() {
				if _, err := p.Scan(context.Background(), fakes.Root(b, root), ScanOptions{NoRecords: true}, time.Now()); err != nil {
					b.Fatal(err)
				}
			})
			if cold {
				dropCaches(b)
			}
			var scan *Scan
			scanTime, scanHeap := peakHeap(func() {
				var err error
				// A cycle that wants 100 MiB freed: the heap keeps ~100 MiB of candidates.
				scan, err = p.Scan(context.Background(), fakes.Root(b, root), ScanOptions{Want: 100 << 20, Keep: 10}, time.Now())
				if err != nil {
					b.Fatal(err)
				}
			})
			if scan.Files != int64(files) {
				b.Fatalf("scan saw %d files of %d", scan.Files, files)
			}
			b.ReportMetric(findTime.Seconds(), "find-"+label+"-s")
			b.ReportMetric(scanTime.Seconds(), "scan-"+label+"-s")
			b.ReportMetric(usageTime.Seconds(), "usage-"+label+"-s")
			b.ReportMetric(float64(usageHeap)/(1<<20), "usage-"+label+"-peakheap-MiB")
			b.ReportMetric(float64(findRSS)/(1<<20), "find-"+label+"-maxrss-MiB")
			b.ReportMetric(float64(scanHeap)/(1<<20), "scan-"+label+"-peakheap-MiB")
			b.Logf("%s: find %s (max RSS %d MiB); usage walk %s (peak heap %d MiB); candidate scan %s (peak heap %d MiB, %d candidates kept of %d eligible)",
				label, findTime.Round(time.Millisecond), findRSS>>20, usageTime.Round(time.Millisecond), usageHeap>>20,
				scanTime.Round(time.Millisecond), scanHeap>>20, len(scan.Candidates), scan.Eligible)
		}
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	b.ReportMetric(float64(ru.Maxrss)/1024, "bench-process-maxrss-MiB")
}

func makeTree(b *testing.B, root string, files int) {
	const perDir = 1000
	dirs := (files + perDir - 1) / perDir
	rec := &stub.Record{State: stub.Premigrated, Key: "bench/1", Size: 1, ChunkSize: stub.DefaultChunkSize,
		SumsCount: 1, Sums: []uint32{0}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := int(next.Add(1) - 1); d < dirs; d = int(next.Add(1) - 1) {
				dir := filepath.Join(root, fmt.Sprintf("d%04d", d))
				if err := os.Mkdir(dir, 0o755); err != nil {
					b.Error(err)
					return
				}
				for f := 0; f < perDir && d*perDir+f < files; f++ {
					fd, err := syscall.Open(filepath.Join(dir, fmt.Sprintf("f%04d", f)), syscall.O_CREAT|syscall.O_WRONLY|syscall.O_CLOEXEC, 0o644)
					if err != nil {
						b.Error(err)
						return
					}
					syscall.Write(fd, []byte{'x'})
					if f%10 == 0 {
						var st syscall.Stat_t
						syscall.Fstat(fd, &st)
						r := *rec
						r.Ino, r.MtimeNs = st.Ino, st.Mtim.Sec*1e9+st.Mtim.Nsec
						if err := stub.WriteRecord(fd, &r); err != nil {
							b.Error(err)
						}
					}
					syscall.Close(fd)
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

func dropCaches(b *testing.B) {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		testenv.Missing(b, "cold runs need root: %v", err)
	}
}

// runFind times `find -printf` with what the scan reads of each entry.
func runFind(b *testing.B, root string) (time.Duration, int64) {
	cmd := exec.Command("find", root, "-printf", "%p %s %b %A@ %T@\n")
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	defer devnull.Close()
	cmd.Stdout = devnull
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	return took, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024
}

// peakHeap runs fn and samples the heap in use every 5 ms.
func peakHeap(fn func()) (time.Duration, uint64) {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	start := time.Now()
	fn()
	took := time.Since(start)
	close(done)
	return took, peak.Load() - min(peak.Load(), base.HeapInuse)
}
