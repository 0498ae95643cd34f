package rpc

import (
	"errors"
	"net"
	"sync"
)

// Limits bound the connections a node RPC server holds, so that a flood of
// connections from callers without the key cannot take the descriptors
// that the node's lease, repository and FUSE server need.
type Limits struct {
	// Total is the most connections held at once from addresses that are
	// not Trusted (1024).
	Total int
	// PerPeer is the most connections held at once from one IP address
	// (64), trusted or not.
	PerPeer int
	// Trusted, if set, says whether an IP address is a cluster member's:
	// its connections do not count against Total, so a flood from other
	// addresses cannot lock the members out.
	Trusted func(net.IP) bool
}

// DefaultLimits are the limits of Listen.
func DefaultLimits() Limits { return Limits{Total: 1024, PerPeer: 64} }

// ErrTooManyConnections: a connection over the limits, closed at once.
var ErrTooManyConnections = errors.New("too many connections")

// limitListener closes accepted connections over the limits at once; the
// slot is given back when the connection closes.
type limitListener struct {
	net.Listener
	lim    Limits
	refuse func(from, caller, path string, err error)

	mu      sync.Mutex
	total   int
	perPeer map[string]int
}

func newLimitListener(ln net.Listener, lim Limits, refuse func(from, caller, path string, err error)) *limitListener {
	if lim.Total <= 0 {
		lim.Total = DefaultLimits().Total
	}
	if lim.PerPeer <= 0 {
		lim.PerPeer = DefaultLimits().PerPeer
	}
	return &limitListener{Listener: ln, lim: lim, refuse: refuse, perPeer: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerIP(c.RemoteAddr())
		trusted := l.lim.Trusted != nil && l.lim.Trusted(net.ParseIP(ip))
		if !l.take(ip, trusted) {
			l.refuse(c.RemoteAddr().String(), "", "", ErrTooManyConnections)
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, l: l, ip: ip, trusted: trusted}, nil
	}
}

func (l *limitListener) take(ip string, trusted bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPeer[ip] >= l.lim.PerPeer || (!trusted && l.total >= l.lim.Total) {
		return false
	}
	l.perPeer[ip]++
	if !trusted {
		l.total++
	}
	return true
}

func (l *limitListener) give(ip string, trusted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPeer[ip]--; l.perPeer[ip] <= 0 {
		delete(l.perPeer, ip)
	}
	if !trusted {
		l.total--
	}
}

// held reports the connections held now (for tests and status).
func (l *limitListener) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.perPeer {
		n += c
	}
	return n
}

// Connections is how many connections the server holds now.
func (s *Server) Connections() int { return s.ln.held() }

func peerIP(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

type limitedConn struct {
	net.Conn
	l       *limitListener
	ip      string
	trusted bool
	once    sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.give(c.ip, c.trusted) })
	return err
}
