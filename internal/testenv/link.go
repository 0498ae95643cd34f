package testenv

import (
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"
)

// Link is a TCP proxy that makes a server on this machine look like one
// in another rack: what a client sends reaches the server delay later (a
// request's round trip), and each connection's bytes from the server
// come at most rate bytes a second, as a remote object store serves one
// connection. The kernel here has neither netem nor fq, so it is done in
// user space; the bytes from the server are spliced, not copied. It
// stops when the test ends.
type Link struct {
	t      testing.TB
	ln     net.Listener
	target string
	delay  time.Duration
	rate   float64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

// StartLink listens on a loopback port and forwards to target.
func StartLink(t testing.TB, target string, delay time.Duration, rate float64) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{t: t, ln: ln, target: target, delay: delay, rate: rate, conns: map[net.Conn]bool{}}
	l.wg.Add(1)
	go l.accept()
	t.Cleanup(l.stop)
	return l
}

// Addr is where clients connect.
func (l *Link) Addr() string { return l.ln.Addr().String() }

func (l *Link) stop() {
	l.mu.Lock()
	conns := l.conns
	l.conns = nil // stopped: connections accepted from now are closed
	l.mu.Unlock()
	l.ln.Close()
	for c := range conns {
		c.Close()
	}
	l.wg.Wait()
}

func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[c] = true
	return true
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		client, err := l.ln.Accept()
		if err != nil {
			return // stopped
		}
		server, err := net.Dial("tcp", l.target)
		if err != nil {
			client.Close()
			continue
		}
		if !l.track(client) || !l.track(server) {
			client.Close()
			server.Close()
			return
		}
		l.wg.Add(2)
		go l.up(client.(*net.TCPConn), server.(*net.TCPConn))
		go l.down(server.(*net.TCPConn), client.(*net.TCPConn))
	}
}

// closeBoth ends a connection on both sides (either direction ending
// ends it: HTTP needs no half-closed connection).
func (l *Link) closeBoth(a, b net.Conn) {
	a.Close()
	b.Close()
	l.mu.Lock()
	if l.conns != nil {
		delete(l.conns, a)
		delete(l.conns, b)
	}
	l.mu.Unlock()
}

// up forwards the client's bytes, each piece delay after it came.
func (l *Link) up(client, server *net.TCPConn) {
	defer l.wg.Done()
	type piece struct {
		b  []byte
		at time.Time
	}
	pieces := make(chan piece, 64)
	go func() {
		defer close(pieces)
		for {
			b := make([]byte, 32<<10)
			n, err := client.Read(b)
			if n > 0 {
				pieces <- piece{b[:n], time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		l.closeBoth(client, server)
		for range pieces {
		}
	}()
	for p := range pieces {
		time.Sleep(time.Until(p.at.Add(l.delay)))
		if _, err := server.Write(p.b); err != nil {
			return
		}
	}
}

// down forwards the server's bytes at most rate a second: whatever has
// come (up to a quantum) is spliced on, then the next waits its turn.
func (l *Link) down(server, client *net.TCPConn) {
	defer l.wg.Done()
	defer l.closeBoth(server, client)
	raw, err := server.SyscallConn()
	if err != nil {
		return
	}
	const quantum = 64 << 10
	burst := time.Millisecond // how far the pace may run ahead
	var next time.Time
	for {
		// Wait until the server sent something, and see how much.
		avail := 0
		var ioctlErr error
		err := raw.Read(func(fd uintptr) bool {
			avail, ioctlErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			if ioctlErr != nil || avail > 0 {
				return true
			}
			// Nothing queued: closed by the server, or not yet here.
			var b [1]byte
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return n == 0 && err == nil || err != nil && err != syscall.EAGAIN
		})
		if err != nil || ioctlErr != nil || avail == 0 {
			return
		}
		n := int64(min(avail, quantum))
		if _, err := io.CopyN(client, server, n); err != nil {
			return
		}
		now := time.Now()
		next = maxTime(next, now).Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
		if ahead := next.Sub(now); ahead > burst {
			time.Sleep(ahead - burst)
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Through is m as reached through link l: its endpoint and client go
// through the link (the server is the same).
func (m *MinIO) Through(t testing.TB, l *Link) *MinIO {
	t.Helper()
	if m.CA != "" {
		t.Fatal("a link in front of a TLS server is not built")
	}
	c := *m
	c.Endpoint = l.Addr()
	var err error
	c.Client, err = minio.New(c.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return &c
}
