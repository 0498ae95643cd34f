package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// SecureEtcd is a one-member etcd on loopback that speaks only TLS, asks
// clients for a certificate of its CA, and has authentication on (user
// root, a random password): what a deployment across machines runs.
type SecureEtcd struct {
	*Etcd
	Dir      string // CA, certificates, keys and the password file
	Password string
}

// Env is the client environment cascadefs reads: CA, client
// certificate and key, user, and the password file.
func (e *SecureEtcd) Env() []string {
	return []string{
		"CASCADEFS_ETCD_CA=" + filepath.Join(e.Dir, "ca.pem"),
		"CASCADEFS_ETCD_CERT=" + filepath.Join(e.Dir, "client.pem"),
		"CASCADEFS_ETCD_KEY=" + filepath.Join(e.Dir, "client-key.pem"),
		"CASCADEFS_ETCD_USER=root",
		"CASCADEFS_ETCD_PASSWORD_FILE=" + filepath.Join(e.Dir, "password"),
	}
}

// StartSecureEtcd makes a CA, a server and a client certificate, starts
// the member with them, then turns authentication on.
func StartSecureEtcd(t testing.TB) *SecureEtcd {
	t.Helper()
	bin := EtcdBinary()
	if _, err := os.Stat(bin); err != nil {
		Missing(t, "etcd server not found at %s (run `make tools`)", bin)
	}
	dir := t.TempDir()
	ca, caKey := newCert(t, dir, "ca", nil, nil)
	newCert(t, dir, "server", ca, caKey)
	newCert(t, dir, "client", ca, caKey)
	password := rand.Text()
	if err := os.WriteFile(filepath.Join(dir, "password"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client, peer := fmt.Sprintf("127.0.0.1:%d", FreePort(t)), fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	tlsCfg := clientTLS(t, dir)
	m := &EtcdMember{Name: "m0", Client: client, log: filepath.Join(dir, "m0.log"),
		health: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}}
	m.args = []string{"--name", m.Name, "--data-dir", filepath.Join(dir, m.Name),
		"--listen-client-urls", "https://" + client, "--advertise-client-urls", "https://" + client,
		"--listen-peer-urls", "http://" + peer, "--initial-advertise-peer-urls", "http://" + peer,
		"--initial-cluster", "m0=http://" + peer, "--initial-cluster-state", "new",
		"--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth", "--log-level", "warn"}
	m.start(t, bin)
	e := &SecureEtcd{Etcd: &Etcd{Members: []*EtcdMember{m}, bin: bin}, Dir: dir, Password: password}
	t.Cleanup(m.Kill)
	m.waitHealthy(t)

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + client}, TLS: tlsCfg,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, "root", password); err != nil {
		t.Fatalf("etcd user: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatalf("etcd role: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("etcd auth: %v", err)
	}
	return e
}

// newCert writes NAME.pem and NAME-key.pem: a CA when parent is nil, else
// a certificate for loopback signed by it (server and client use).
func newCert(t testing.TB, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "cascadefs-test-" + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		parent, parentKey = tmpl, key
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientTLS is the test's own client configuration for the member.
func clientTLS(t testing.TB, dir string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	b, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("test CA: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

// WriteTestCA writes a CA of its own (ca.pem) into dir: one that signed
// nothing the test's etcd presents.
func WriteTestCA(t testing.TB, dir string) { newCert(t, dir, "ca", nil, nil) }
