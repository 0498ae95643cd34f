package integration

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/minio/minio-go/v7"
)

// versusReaders is how many readers of different objects the concurrent
// measure runs at once.
const versusReaders = 8

// BenchmarkStubReadVersus reads the same bytes four ways from one MinIO
// server, in the same run: a raw GET (minio-go), an s3fs mount and an
// rclone mount (Debian's, installed when missing; rclone with
// --vfs-cache-mode off), and a cascadefs stub. Three measures: the full
// cold read of one object; the first 4 KiB at random offsets (median of
// 7, each cold); versusReaders readers of different objects at once
// (aggregate). Caches are dropped before each measure; the stubs are
// released again before each.
func BenchmarkStubReadVersus(b *testing.B) {
	needBenchTools(b)
	versus(b, testenv.StartMinIO(b))
}

// BenchmarkStubReadVersusRemote is BenchmarkStubReadVersus with the
// store behind a link like one to another rack (testenv.Link): a round
// trip of CASCADEFS_BENCH_RTT (2ms) before each request's bytes reach
// it, each connection's bytes at most CASCADEFS_BENCH_FLOW MB/s (125),
// as a remote object store serves one connection. MinIO still shares
// this machine's CPU, and so does the link.
func BenchmarkStubReadVersusRemote(b *testing.B) {
	needBenchTools(b)
	rtt, err := time.ParseDuration(cmp.Or(os.Getenv("CASCADEFS_BENCH_RTT"), "2ms"))
	if err != nil {
		b.Fatal(err)
	}
	flow, err := strconv.ParseFloat(cmp.Or(os.Getenv("CASCADEFS_BENCH_FLOW"), "125"), 64)
	if err != nil {
		b.Fatal(err)
	}
	m := testenv.StartMinIO(b)
	fmt.Fprintf(os.Stderr, "store: round trip %v, each connection %.0f MB/s\n", rtt, flow)
	versus(b, m.Through(b, testenv.StartLink(b, m.Endpoint, rtt, flow*1e6)))
}

// needBenchTools installs s3fs and rclone when missing.
func needBenchTools(b *testing.B) {
	if out, err := exec.Command(filepath.Join(testenv.RepoRoot(), "scripts", "need-bench.sh")).CombinedOutput(); err != nil {
		b.Fatalf("s3fs and rclone: %v\n%s", err, out)
	}
}

// versus runs the measures of BenchmarkStubReadVersus against m.
func versus(b *testing.B, m *testenv.MinIO) {
	size := benchSize()
	d := testenv.NewDaemon(b, m.Bucket(b, "versus"), m.EnvList())
	d.Start()
	ctx := context.Background()
	if err := m.Client.MakeBucket(ctx, "plain", minio.MakeBucketOptions{}); err != nil {
		b.Fatal(err)
	}
	var names []string
	for i := range versusReaders {
		n := fmt.Sprintf("f%d", i)
		names = append(names, n)
		writeFileOf(b, d.B(n), size)
		if _, err := m.Client.FPutObject(ctx, "plain", n, d.B(n), minio.PutObjectOptions{PartSize: 64 << 20, NumThreads: 4}); err != nil {
			b.Fatal(err)
		}
	}
	d.MustCLI(append([]string{"migrate"}, mounted(d, names)...)...)
	s3fs := mountS3fs(b, m)
	rclone := mountRclone(b, m)

	ways := []struct {
		name string
		path func(n string) string // "" for the raw GET
	}{
		{"rawGET", nil},
		{"s3fs", func(n string) string { return filepath.Join(s3fs, n) }},
		{"rclone", func(n string) string { return filepath.Join(rclone, n) }},
		{"cascadefs", d.M},
	}
	release := func() { d.MustCLI(append([]string{"migrate"}, mounted(d, names)...)...) }
	full := map[string][]float64{}
	first := map[string][]time.Duration{}
	together := map[string][]float64{}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range b.N {
		// Each round starts with the next way: on a 2-core machine the
		// first read after another's runs faster, and no way should
		// always have that place.
		for i := range ways {
			w := ways[(round+i)%len(ways)]
			release()
			testenv.DropHostCaches()
			var took time.Duration
			if w.path == nil {
				took = timeRawGet(b, m, "plain", names[0], size)
			} else {
				took = readFile(b, w.path(names[0]))
			}
			full[w.name] = append(full[w.name], mbps(size, took))

			var firsts []time.Duration
			for range 7 {
				off := rng.Int64N(size-4096) / 4096 * 4096
				release()
				testenv.DropHostCaches()
				firsts = append(firsts, firstBytes(b, m, w.path, names[1], off))
			}
			first[w.name] = append(first[w.name], median(firsts))

			release()
			testenv.DropHostCaches()
			start := time.Now()
			var wg sync.WaitGroup
			for _, n := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if w.path == nil {
						timeRawGet(b, m, "plain", n, size)
					} else {
						readFile(b, w.path(n))
					}
				}()
			}
			wg.Wait()
			together[w.name] = append(together[w.name], mbps(versusReaders*size, time.Since(start)))
		}
	}
	for _, w := range ways {
		slices.Sort(full[w.name])
		fmt.Fprintf(os.Stderr, "%s: full read MB/s %.0f, first 4 KiB ms %.1f, %d readers MB/s %.0f\n", w.name,
			full[w.name], msOf(first[w.name]), versusReaders, together[w.name])
		b.ReportMetric(full[w.name][len(full[w.name])/2], w.name+"-full-MB/s")
		b.ReportMetric(float64(median(first[w.name]).Microseconds())/1000, w.name+"-first4k-ms")
		slices.Sort(together[w.name])
		b.ReportMetric(together[w.name][len(together[w.name])/2], w.name+"-8readers-MB/s")
	}
	fmt.Fprintf(os.Stderr, "size=%d\n", size)
}

func mounted(d *testenv.Daemon, names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, d.M(n))
	}
	return out
}

func msOf(ds []time.Duration) []float64 {
	var out []float64
	for _, d := range ds {
		out = append(out, float64(d.Microseconds())/1000)
	}
	return out
}

// firstBytes times the first 4 KiB at off: a ranged GET, or an open and
// a read of the path.
func firstBytes(b *testing.B, m *testenv.MinIO, path func(string) string, name string, off int64) time.Duration {
	if path == nil {
		buf := make([]byte, 4096)
		start := time.Now()
		var opts minio.GetObjectOptions
		opts.SetRange(off, off+4095)
		body, _, _, err := minio.Core{Client: m.Client}.GetObject(context.Background(), "plain", name, opts)
		if err != nil {
			b.Fatal(err)
		}
		defer body.Close()
		if _, err := io.ReadFull(body, buf); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	return timeFirst4K(b, path(name), off)
}

// timeFirst4K times an open of p and a read of its 4 KiB at off.
func timeFirst4K(b *testing.B, p string, off int64) time.Duration {
	buf := make([]byte, 4096)
	start := time.Now()
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, off); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// mountS3fs mounts the bucket "plain" with s3fs, unmounted at the end.
func mountS3fs(b *testing.B, m *testenv.MinIO) string {
	dir := b.TempDir()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	pass := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pass, []byte(m.AccessKey+":"+m.SecretKey+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("s3fs", "plain", mp, "-o", "passwd_file="+pass, "-o", "url=http://"+m.Endpoint,
		"-o", "use_path_request_style", "-o", "allow_other")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("s3fs: %v\n%s", err, out)
	}
	b.Cleanup(func() { syscall.Unmount(mp, syscall.MNT_DETACH) })
	waitListed(b, mp)
	return mp
}

// mountRclone mounts the bucket "plain" with rclone mount, no VFS cache.
func mountRclone(b *testing.B, m *testenv.MinIO) string {
	dir := b.TempDir()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	conf := filepath.Join(dir, "rclone.conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf("[minio]\ntype = s3\nprovider = Minio\naccess_key_id = %s\nsecret_access_key = %s\nendpoint = http://%s\n",
		m.AccessKey, m.SecretKey, m.Endpoint)), 0o600)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("rclone", "mount", "--config", conf, "minio:plain", mp, "--vfs-cache-mode", "off", "--allow-other")
	// rclone 1.60 refuses to start with AWS_CA_BUNDLE set ("unsupported
	// transport"), as some machines set it for every tool.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_CA_BUNDLE=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		syscall.Unmount(mp, syscall.MNT_DETACH)
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitListed(b, mp)
	return mp
}

// waitListed waits until a mount lists its first object.
func waitListed(b *testing.B, mp string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if names, err := os.ReadDir(mp); err == nil && len(names) > 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s lists nothing after 30s", mp)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
