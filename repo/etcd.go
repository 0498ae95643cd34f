package repo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/cascadefs/cascadefs/internal/secret"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is the repository in an etcd cluster, for nodes on several
// machines. Keys live under /cascadefs/: fs/NAME (the filesystem record,
// owner and epoch included), nodes/NAME, events/FS/TOKEN, and lease/NAME,
// a key bound to the node's etcd lease: it exists exactly while the lease
// lives, as the etcd servers judge it. A filesystem is claimed from its
// owner by a transaction that requires the owner's lease key to be gone
// and the record unchanged since it was read; the epoch it sets is the
// fencing token every commit confirms with a linearizable read.
type Etcd struct {
	endpoints []string
	cli       *clientv3.Client
	timeout   time.Duration

	mu     sync.Mutex
	leases map[string]clientv3.LeaseID // this process's leases, by node
}

var _ Repository = (*Etcd)(nil)

const etcdPrefix = "/cascadefs/"

// EtcdScheme starts a repository URL of the etcd engine:
// etcd://HOST:PORT[,HOST:PORT...].
const EtcdScheme = "etcd://"

// The client's TLS files and credentials come from the environment (or a
// credentials file that sets it), never from the command line.
const (
	envEtcdCA       = "CASCADEFS_ETCD_CA"
	envEtcdCert     = "CASCADEFS_ETCD_CERT"
	envEtcdKey      = "CASCADEFS_ETCD_KEY"
	envEtcdUser     = "CASCADEFS_ETCD_USER"
	envEtcdPassword = "CASCADEFS_ETCD_PASSWORD"
	envEtcdPassFile = "CASCADEFS_ETCD_PASSWORD_FILE"
)

// OpenEtcd connects to the etcd cluster of url (etcd://HOST:PORT,...),
// with TLS when CASCADEFS_ETCD_CA is set (and a client certificate when
// CASCADEFS_ETCD_CERT and _KEY are), and user/password when
// CASCADEFS_ETCD_USER is set (password from CASCADEFS_ETCD_PASSWORD_FILE
// or CASCADEFS_ETCD_PASSWORD).
func OpenEtcd(url string) (*Etcd, error) {
	hosts := strings.TrimPrefix(url, EtcdScheme)
	if hosts == url || hosts == "" {
		return nil, fmt.Errorf("repository %q: want etcd://HOST:PORT[,HOST:PORT...]", url)
	}
	cfg := clientv3.Config{DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second}
	scheme := "http://"
	if ca := os.Getenv(envEtcdCA); ca != "" {
		t, err := etcdTLS(ca, os.Getenv(envEtcdCert), os.Getenv(envEtcdKey))
		if err != nil {
			return nil, err
		}
		cfg.TLS, scheme = t, "https://"
	}
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h == "" || strings.Contains(h, "/") {
			return nil, fmt.Errorf("repository %q: bad etcd endpoint %q (want HOST:PORT)", url, h)
		}
		cfg.Endpoints = append(cfg.Endpoints, scheme+h)
	}
	if user := os.Getenv(envEtcdUser); user != "" {
		pass := os.Getenv(envEtcdPassword)
		if f := os.Getenv(envEtcdPassFile); f != "" {
			b, err := secret.Read("etcd password file ("+envEtcdPassFile+")", f)
			if err != nil {
				return nil, err
			}
			pass = strings.TrimSpace(string(b))
		}
		cfg.Username, cfg.Password = user, pass
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: etcd at %s: %v", ErrNoRepo, hosts, explainEtcd(err, cfg))
	}
	e := &Etcd{endpoints: cfg.Endpoints, cli: cli, timeout: 5 * time.Second, leases: map[string]clientv3.LeaseID{}}
	// One read now: an unreachable cluster or bad credentials are reported
	// at once, with what the admin can do about them.
	ctx, cancel := e.bound(context.Background())
	defer cancel()
	if _, err := cli.Get(ctx, etcdPrefix+"format"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("%w: etcd at %s: %v", ErrNoRepo, hosts, explainEtcd(err, cfg))
	}
	return e, nil
}

// explainEtcd turns what the etcd client says when it cannot get in (a
// TLS mismatch shows only as a dial timeout) into what the admin should
// change, by looking at the first endpoint's TLS handshake itself.
func explainEtcd(err error, cfg clientv3.Config) error {
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("%v (check %s and the password in %s or %s)", err, envEtcdUser, envEtcdPassFile, envEtcdPassword)
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty):
		return fmt.Errorf("%v: authentication is on; set %s and its password (or give the client certificate's user a role for %s)",
			err, envEtcdUser, etcdPrefix)
	case !errors.Is(err, context.DeadlineExceeded):
		return err
	}
	host := strings.TrimPrefix(strings.TrimPrefix(cfg.Endpoints[0], "https://"), "http://")
	if hint := tlsHint(host, cfg.TLS); hint != "" {
		return fmt.Errorf("%v: %s", err, hint)
	}
	return err
}

// tlsHint reports what is wrong with TLS to host, or "" when nothing is
// (or it cannot tell: the host may simply be down).
func tlsHint(host string, cfg *tls.Config) string {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	if cfg == nil {
		// Only a look: does the server speak TLS? Nothing is sent over it.
		conn, err := tls.DialWithDialer(dialer, "tcp", host, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return ""
		}
		conn.Close()
		return fmt.Sprintf("%s speaks TLS: set %s to the CA that signed its certificate (and %s and %s if it asks for a client certificate)",
			host, envEtcdCA, envEtcdCert, envEtcdKey)
	}
	c := cfg.Clone()
	if h, _, err := net.SplitHostPort(host); err == nil {
		c.ServerName = h
	}
	conn, err := tls.DialWithDialer(dialer, "tcp", host, c)
	var unknown x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.As(err, &unknown):
		return fmt.Sprintf("the certificate of %s is not signed by the CA in %s", host, envEtcdCA)
	case errors.As(err, &hostErr):
		return fmt.Sprintf("the certificate of %s is not for that address: %v", host, hostErr)
	case err != nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		strings.Contains(err.Error(), "first record does not look like a TLS handshake")):
		// A plain etcd hangs up on a TLS hello.
		return fmt.Sprintf("%s does not speak TLS (it hung up on the handshake): unset %s, or give etcd its certificate", host, envEtcdCA)
	case err != nil:
		return fmt.Sprintf("TLS to %s: %v", host, err)
	}
	defer conn.Close()
	// With TLS 1.3 a missing or refused client certificate shows only
	// at the first read, as an alert from the server.
	conn.SetReadDeadline(time.Now().Add(time.Second))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil && strings.Contains(err.Error(), "certificate") {
		if len(cfg.Certificates) == 0 {
			return fmt.Sprintf("%s asks for a client certificate: set %s and %s", host, envEtcdCert, envEtcdKey)
		}
		return fmt.Sprintf("%s refused the client certificate in %s: %v", host, envEtcdCert, err)
	}
	return ""
}

func etcdTLS(ca, cert, key string) (*tls.Config, error) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("etcd CA %s: no certificate in it", ca)
	}
	t := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != "" || key != "" {
		if key != "" {
			if err := secret.Check("etcd client key ("+envEtcdKey+")", key); err != nil {
				return nil, err
			}
		}
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}

func (e *Etcd) String() string { return EtcdScheme + strings.Join(e.endpoints, ",") }

// Close ends the client (the node's lease lapses by itself unless dropped).
func (e *Etcd) Close() error { return e.cli.Close() }

// bound is ctx within the engine's timeout.
func (e *Etcd) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.timeout)
}

func fsKey(name string) string         { return etcdPrefix + "fs/" + name }
func nodeKey(name string) string       { return etcdPrefix + "nodes/" + name }
func leaseKey(name string) string      { return etcdPrefix + "lease/" + name }
func eventKey(fs, token string) string { return etcdPrefix + "events/" + fs + "/" + token }
func eventPrefix(fs string) string     { return etcdPrefix + "events/" + fs + "/" }
func decode[T any](raw []byte, kind, key string) (T, error) {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("%w: %s %q: %v", ErrCorrupt, kind, key, err)
	}
	return v, nil
}

// getFS reads a filesystem and the revision its record was last changed at.
func (e *Etcd) getFS(ctx context.Context, name string) (FS, int64, error) {
	resp, err := e.cli.Get(ctx, fsKey(name))
	if err != nil {
		return FS{}, 0, err
	}
	if len(resp.Kvs) == 0 {
		return FS{}, 0, fmt.Errorf("filesystem %q: %w", name, ErrNotFound)
	}
	fs, err := decode[FS](resp.Kvs[0].Value, "filesystem", name)
	return fs, resp.Kvs[0].ModRevision, err
}

// swapFS writes fs if its record is still at rev; false if it changed.
func (e *Etcd) swapFS(ctx context.Context, fs FS, rev int64, extra ...clientv3.Cmp) (bool, error) {
	raw, err := json.Marshal(fs)
	if err != nil {
		return false, err
	}
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(fsKey(fs.Name)), "=", rev)}, extra...)
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(fsKey(fs.Name), string(raw))).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

func (e *Etcd) AddFS(ctx context.Context, fs FS) error {
	if err := ValidName("filesystem", fs.Name); err != nil {
		return err
	}
	raw, err := json.Marshal(fs)
	if err != nil {
		return err
	}
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(fsKey(fs.Name)), "=", 0)).
		Then(clientv3.OpPut(fsKey(fs.Name), string(raw))).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("filesystem %q: %w", fs.Name, ErrExists)
	}
	return nil
}

func (e *Etcd) GetFS(ctx context.Context, name string) (FS, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	fs, _, err := e.getFS(ctx, name)
	return fs, err
}

func (e *Etcd) ListFS(ctx context.Context) ([]FS, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, etcdPrefix+"fs/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []FS
	for _, kv := range resp.Kvs {
		fs, err := decode[FS](kv.Value, "filesystem", string(kv.Key))
		if err != nil {
			return nil, err
		}
		out = append(out, fs)
	}
	return out, nil
}

// change applies fn to a filesystem record until the write finds it
// unchanged (optimistic concurrency); extra compares join the write's.
func (e *Etcd) change(ctx context.Context, name string, fn func(*FS) error, extra func(FS) []clientv3.Cmp) (FS, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	for {
		fs, rev, err := e.getFS(ctx, name)
		if err != nil {
			return FS{}, err
		}
		if err := fn(&fs); err != nil {
			return FS{}, err
		}
		var cmps []clientv3.Cmp
		if extra != nil {
			cmps = extra(fs)
		}
		ok, err := e.swapFS(ctx, fs, rev, cmps...)
		if err != nil {
			return FS{}, err
		}
		if ok {
			return fs, nil
		}
		if len(cmps) > 0 { // a compare of its own may have failed: look again
			if _, rev2, err := e.getFS(ctx, name); err == nil && rev2 == rev {
				return FS{}, errExtraFailed
			}
		}
	}
}

var errExtraFailed = errors.New("compare failed")

func (e *Etcd) UpdateFS(ctx context.Context, name string, fn func(*FS) error) error {
	_, err := e.change(ctx, name, func(fs *FS) error {
		owner, epoch, history := fs.Owner, fs.Epoch, fs.Takeovers
		if err := fn(fs); err != nil {
			return err
		}
		fs.Name, fs.Owner, fs.Epoch, fs.Takeovers = name, owner, epoch, history
		return nil
	}, nil)
	return err
}

func (e *Etcd) RemoveFS(ctx context.Context, name string) error {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(fsKey(name)), ">", 0)).
		Then(clientv3.OpDelete(fsKey(name)), clientv3.OpDelete(eventPrefix(name), clientv3.WithPrefix())).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("filesystem %q: %w", name, ErrNotFound)
	}
	return nil
}

func (e *Etcd) PutNode(ctx context.Context, n Node) error {
	if err := ValidName("node", n.Name); err != nil {
		return err
	}
	raw, err := json.Marshal(n)
	if err != nil {
		return err
	}
	ctx, cancel := e.bound(ctx)
	defer cancel()
	_, err = e.cli.Put(ctx, nodeKey(n.Name), string(raw))
	return err
}

func (e *Etcd) ListNodes(ctx context.Context) ([]Node, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, etcdPrefix+"nodes/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []Node
	for _, kv := range resp.Kvs {
		n, err := decode[Node](kv.Value, "node", string(kv.Key))
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Renew keeps node's etcd lease alive, granting one (and binding the
// node's lease key to it) when this process holds none or it expired.
func (e *Etcd) Renew(ctx context.Context, node string, ttl time.Duration) error {
	if err := ValidName("node", node); err != nil {
		return err
	}
	// A renewal that cannot finish within half the TTL is too late anyway;
	// the caller must learn of it while it can still stop in time.
	ctx, cancel := context.WithTimeout(ctx, min(e.timeout, max(ttl/2, 500*time.Millisecond)))
	defer cancel()
	e.mu.Lock()
	id, ok := e.leases[node]
	e.mu.Unlock()
	if ok {
		// Short tries within the budget: a member that just died holds a
		// try until its timeout, and the next goes to another member.
		var err error
		for ctx.Err() == nil {
			try, cancelTry := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = e.cli.KeepAliveOnce(try, id)
			cancelTry()
			if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
				break
			}
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return err
		}
		// Expired at the servers: whatever it covered may be taken; a new
		// lease covers only what this node still owns.
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	g, err := e.cli.Grant(ctx, max(secs, 1))
	if err != nil {
		return err
	}
	if _, err := e.cli.Put(ctx, leaseKey(node), strconv.FormatInt(ttl.Milliseconds(), 10), clientv3.WithLease(g.ID)); err != nil {
		e.cli.Revoke(ctx, g.ID)
		return err
	}
	e.mu.Lock()
	e.leases[node] = g.ID
	e.mu.Unlock()
	return nil
}

func (e *Etcd) DropLease(ctx context.Context, node string) error {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	e.mu.Lock()
	id, ok := e.leases[node]
	delete(e.leases, node)
	e.mu.Unlock()
	if ok {
		if _, err := e.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return err
		}
	}
	_, err := e.cli.Delete(ctx, leaseKey(node))
	return err
}

func (e *Etcd) Leases(ctx context.Context) ([]NodeLease, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, etcdPrefix+"lease/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []NodeLease
	for _, kv := range resp.Kvs {
		ms, _ := strconv.ParseInt(string(kv.Value), 10, 64)
		out = append(out, NodeLease{Node: strings.TrimPrefix(string(kv.Key), etcdPrefix+"lease/"),
			TTL: time.Duration(ms) * time.Millisecond, Live: true})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

func (e *Etcd) Claim(ctx context.Context, name, node, from, reason string) (FS, error) {
	var leaseCheck func(FS) []clientv3.Cmp
	if from != "" && from != node && !protect.Off(protect.ClaimLeaseCheck) {
		// The owner's lease key is gone: its lease expired or was revoked.
		leaseCheck = func(FS) []clientv3.Cmp {
			return []clientv3.Cmp{clientv3.Compare(clientv3.Version(leaseKey(from)), "=", 0)}
		}
	}
	// The lease part of the rule is the transaction's compare.
	notHere := func() (bool, error) { return false, nil }
	fs, err := e.change(ctx, name, func(fs *FS) error { return claimFrom(fs, node, from, reason, notHere) }, leaseCheck)
	if errors.Is(err, errExtraFailed) {
		return FS{}, fmt.Errorf("filesystem %q: %s: %w", name, from, ErrLeaseLive)
	}
	return fs, err
}

func (e *Etcd) Move(ctx context.Context, name, from string, epoch uint64, to, reason string) (FS, error) {
	return e.change(ctx, name, func(fs *FS) error { return moveFrom(fs, from, epoch, to, reason) }, nil)
}

// Confirm reads the record linearizably (through the cluster's leader):
// what it sees is current at some moment after the call began.
func (e *Etcd) Confirm(ctx context.Context, name, node string, epoch uint64) error {
	return confirm(ctx, e, name, node, epoch)
}

func (e *Etcd) PutEntry(ctx context.Context, fs, token string, data []byte) error {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	_, err := e.cli.Put(ctx, eventKey(fs, token), string(data))
	return err
}

func (e *Etcd) GetEntry(ctx context.Context, fs, token string) ([]byte, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, eventKey(fs, token))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("event %q: %w", token, ErrNotFound)
	}
	return resp.Kvs[0].Value, nil
}

func (e *Etcd) DeleteEntry(ctx context.Context, fs, token string) error {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	_, err := e.cli.Delete(ctx, eventKey(fs, token))
	return err
}

func (e *Etcd) ListEntries(ctx context.Context, fs string) (map[string][]byte, error) {
	ctx, cancel := e.bound(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, eventPrefix(fs), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), eventPrefix(fs))] = kv.Value
	}
	return out, nil
}
