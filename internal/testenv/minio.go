// Package testenv starts the real components that tests need: a MinIO
// server on a loopback port and cascadefs daemons, each cleaned up by the
// test that started it, even when the test fails.
package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO is a running S3 server: MinIO, or versitygw under make compat
// (S3Server).
type MinIO struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Client    *minio.Client
	// CA is the PEM file of the CA that signed the server's certificate
	// (StartMinIOTLS); empty for plain HTTP.
	CA   string
	Kind string // minio or versitygw
	Data string // the server's data directory (versitygw: BUCKET/KEY are files in it)
	proc *os.Process
}

// Pause stops the server (SIGSTOP): requests hang as on a stuck archive.
func (m *MinIO) Pause() { m.proc.Signal(syscall.SIGSTOP) }

// Resume lets a paused server go on.
func (m *MinIO) Resume() { m.proc.Signal(syscall.SIGCONT) }

// RepoRoot is the root of the cascadefs checkout.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// MinIOBinary finds the pinned MinIO server ($CASCADEFS_MINIO or .tools/minio).
func MinIOBinary() string {
	if p := os.Getenv("CASCADEFS_MINIO"); p != "" {
		return p
	}
	return filepath.Join(RepoRoot(), ".tools", "minio")
}

// StartMinIO starts MinIO with its own data directory and waits until it is
// ready. Without the binary the test fails under `make test` (see Missing).
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	return StartMinIOAt(t, "127.0.0.1")
}

// StartMinIOAt is StartMinIO listening on ip (the gateway of a Net, for
// nodes in network namespaces).
func StartMinIOAt(t testing.TB, ip string) *MinIO {
	t.Helper()
	return startS3(t, S3Server(), ip, false)
}

// StartMinIOTLS is StartMinIO serving HTTPS with a certificate from a CA
// of the test's own (m.CA), as an object store with a private CA.
func StartMinIOTLS(t testing.TB) *MinIO {
	t.Helper()
	return startS3(t, S3Server(), "127.0.0.1", true)
}

// S3Server is the S3 server the tests start: MinIO, or versitygw (its
// POSIX backend) when CASCADEFS_S3_SERVER=versitygw (make compat).
func S3Server() string {
	if os.Getenv("CASCADEFS_S3_SERVER") == "versitygw" {
		return "versitygw"
	}
	return "minio"
}

// StartS3 starts an S3 server of the kind given (minio or versitygw),
// whatever CASCADEFS_S3_SERVER says: for tests that need both at once.
func StartS3(t testing.TB, kind string) *MinIO {
	t.Helper()
	return startS3(t, kind, "127.0.0.1", false)
}

func startS3(t testing.TB, kind, ip string, withTLS bool) *MinIO {
	t.Helper()
	bin := MinIOBinary()
	if kind == "versitygw" {
		bin = filepath.Join(RepoRoot(), ".tools", "versitygw")
	}
	if _, err := os.Stat(bin); err != nil {
		Missing(t, "%s server not found at %s (run `make tools`, or `make compat` for versitygw)", kind, bin)
	}
	port := FreePort(t)
	data := t.TempDir()
	m := &MinIO{Endpoint: fmt.Sprintf("%s:%d", ip, port), AccessKey: "cascadefs-test", SecretKey: "cascadefs-test-secret", Kind: kind, Data: data}
	args := []string{"server", "--quiet", "--address", m.Endpoint, "--console-address", fmt.Sprintf("127.0.0.1:%d", FreePort(t))}
	health := "/minio/health/ready"
	if kind == "versitygw" {
		args = []string{"--access", m.AccessKey, "--secret", m.SecretKey, "--port", m.Endpoint, "--health", "/health", "--quiet"}
		health = "/health"
	}
	scheme, transport := "http", http.DefaultTransport
	if withTLS {
		certs := t.TempDir()
		ca, caKey := newCert(t, certs, "ca", nil, nil)
		newCert(t, certs, "server", ca, caKey)
		m.CA = filepath.Join(certs, "ca.pem")
		if kind == "versitygw" {
			args = append(args, "--cert", filepath.Join(certs, "server.pem"), "--key", filepath.Join(certs, "server-key.pem"))
		} else {
			for from, to := range map[string]string{"server.pem": "public.crt", "server-key.pem": "private.key"} {
				if err := os.Rename(filepath.Join(certs, from), filepath.Join(certs, to)); err != nil {
					t.Fatal(err)
				}
			}
			args = append(args, "--certs-dir", certs)
		}
		pool := x509.NewCertPool()
		if b, err := os.ReadFile(m.CA); err != nil || !pool.AppendCertsFromPEM(b) {
			t.Fatalf("test CA: %v", err)
		}
		scheme, transport = "https", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	if kind == "versitygw" {
		args = append(args, "posix")
	}
	cmd := exec.Command(bin, append(args, data)...)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	logf, _ := os.Create(filepath.Join(data, "..", kind+".log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", kind, err)
	}
	m.proc = cmd.Process
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := (&http.Client{Transport: transport}).Get(scheme + "://" + m.Endpoint + health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s at %s not ready after 60s", kind, m.Endpoint)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var err error
	m.Client, err = minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Secure: withTLS, Transport: transport})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Bucket creates a bucket and returns its archive URL.
func (m *MinIO) Bucket(t testing.TB, name string) string {
	t.Helper()
	if err := m.Client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket: %v", err)
	}
	return m.URL(name)
}

// LockedBucket makes a bucket with S3 object lock enabled (and so
// versioning) and returns its archive URL.
func (m *MinIO) LockedBucket(t testing.TB, name string) string {
	t.Helper()
	if err := m.Client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{ObjectLocking: true}); err != nil {
		t.Fatalf("make locked bucket: %v", err)
	}
	return m.URL(name)
}

// URL is the archive URL of BUCKET[/PREFIX] on this server.
func (m *MinIO) URL(bucketAndPrefix string) string {
	u := fmt.Sprintf("s3://%s?endpoint=%s&insecure=true", bucketAndPrefix, m.Endpoint)
	if m.CA != "" {
		u = fmt.Sprintf("s3://%s?endpoint=%s&ca=%s", bucketAndPrefix, m.Endpoint, m.CA)
	}
	if m.Kind == "versitygw" {
		u += "&checksum=md5" // v1.8.0 refuses minio-go's trailing checksums over plain HTTP
	}
	return u
}

// Env sets the credentials for code in this process that opens the archive.
func (m *MinIO) Env(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
}

// EnvList is the credentials as environment entries for a child process.
func (m *MinIO) EnvList() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// The kernel may hand the same free port out twice in a row (a
		// node and its peer once got one gossip port): never repeat one.
		if !portsGiven[port] {
			portsGiven[port] = true
			return port
		}
	}
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)
