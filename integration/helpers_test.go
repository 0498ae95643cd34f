package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/testenv"
)

// archives runs fn against the directory archive and a real MinIO.
func archives(t *testing.T, fn func(t *testing.T, newDaemon func(extra ...string) *testenv.Daemon)) {
	t.Run("file", func(t *testing.T) {
		fn(t, func(extra ...string) *testenv.Daemon {
			d := testenv.NewDaemon(t, "", nil, extra...)
			d.Start()
			return d
		})
	})
	t.Run("s3", func(t *testing.T) {
		m := testenv.StartMinIO(t)
		url := m.Bucket(t, "hsm")
		fn(t, func(extra ...string) *testenv.Daemon {
			d := testenv.NewDaemon(t, url, m.EnvList(), extra...)
			d.Start()
			return d
		})
	})
}

func writeRandom(t *testing.T, path string, size int64) [32]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func sumFile(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return [32]byte(h.Sum(nil))
}

// ls returns the daemon's view of the files under rel.
func ls(t *testing.T, d *testenv.Daemon, paths ...string) map[string]daemon.Entry {
	t.Helper()
	out := d.MustCLI(append([]string{"ls", "-r", "--json"}, paths...)...)
	var entries []daemon.Entry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("ls output: %v\n%s", err, out)
	}
	m := map[string]daemon.Entry{}
	for _, e := range entries {
		m[e.Path] = e
	}
	return m
}

func state(t *testing.T, d *testenv.Daemon, rel string) daemon.Entry {
	t.Helper()
	return ls(t, d, d.M(rel))[d.M(rel)]
}

// stateAfterRead is a file's entry once its recall settled: a reader on
// the owner is served from memory before the recall's last writes and
// its commit, so a state looked at just after a read may lag behind.
func stateAfterRead(t *testing.T, d *testenv.Daemon, rel string) daemon.Entry {
	t.Helper()
	var e daemon.Entry
	testenv.WaitFor(t, rel+" premigrated after its read", 20*time.Second, func() bool {
		e = state(t, d, rel)
		return e.State != "migrated"
	})
	return e
}

// saturateCPUs keeps every core of this machine busy, twice over, for d.
func saturateCPUs(d time.Duration) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
					for i := range 1_000_000 {
						x += i
					}
				}
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
}
