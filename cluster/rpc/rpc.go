// Package rpc is the node RPC: JSON requests over HTTP between the nodes of
// a cluster. Every request and every answer is signed with an HMAC key
// derived from the cluster key, with a timestamp and a nonce. A call's
// signature covers the receiving node, the method, the path and the body,
// so only holders of the key can call a node or answer as one, and a
// recorded request cannot be replayed, to this node or to another, nor
// sent to another endpoint. Every answer is signed over the call's nonce,
// errors and refusals included. Anything else is refused and logged.
package rpc

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Errors a caller can tell apart.
var (
	ErrUnauthorized = errors.New("request not signed with the cluster key")
	ErrBadAnswer    = errors.New("answer not signed with the cluster key")
)

// RemoteError is an error returned by the called node's handler. Code is
// the handler's own label (for example "not-owner"), empty if none.
type RemoteError struct {
	Code string `json:"code,omitempty"`
	Msg  string `json:"error"`
}

func (e *RemoteError) Error() string { return e.Msg }

// Coded lets a handler label an error for the caller.
func Coded(code string, err error) error { return &RemoteError{Code: code, Msg: err.Error()} }

// CodeOf returns the label of a remote error, or "".
func CodeOf(err error) string {
	var re *RemoteError
	if errors.As(err, &re) {
		return re.Code
	}
	return ""
}

const (
	hNode  = "X-Cascadefs-Node"
	hTime  = "X-Cascadefs-Time"
	hNonce = "X-Cascadefs-Nonce"
	hSig   = "X-Cascadefs-Sig"
	hBody  = "X-Cascadefs-Body" // the body's SHA-256: signed, so the body is read only after the signature holds
	skew   = 60 * time.Second   // accepted clock difference, and how long nonces are remembered
)

// Key is the RPC signing key; derive it with NewKey.
type Key []byte

// NewKey derives the RPC key from the cluster key, so the gossip key itself
// never signs anything else.
func NewKey(clusterKey []byte) Key {
	m := hmac.New(sha256.New, clusterKey)
	m.Write([]byte("cascadefs node rpc v1"))
	return m.Sum(nil)
}

func (k Key) sign(parts ...string) string {
	m := hmac.New(sha256.New, k)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

func bodySum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Handler serves one path; caller is the signed name of the calling node.
type Handler func(ctx context.Context, caller string, req json.RawMessage) (any, error)

// Server answers signed requests. What a caller without the key can cost
// it is bounded (DESIGN.md, invariant 14): connections in total and per
// peer address (limit.go), headers in size and time, idle connections in
// time, and nothing of a body is read before the headers' signature holds.
type Server struct {
	name   string // this node: calls must be signed for it
	key    Key
	log    *slog.Logger
	mux    *http.ServeMux
	srv    *http.Server
	ln     *limitListener
	mu     sync.Mutex
	nonces map[string]time.Time
	// refusals counts refused calls since the last log line about them
	// (a flood is logged once a second, not once per call).
	refusals   int
	lastRefLog time.Time
}

// Timeouts and sizes of the server; see Limits for connections.
const (
	headerTimeout = 5 * time.Second  // a slow sender of headers is cut off
	bodyTimeout   = 30 * time.Second // the whole request, body included
	idleTimeout   = 30 * time.Second // a kept-alive connection with no call
	maxHeader     = 16 << 10
	// DefaultMaxBody is the largest body a path takes unless registered
	// with another bound.
	DefaultMaxBody = 64 << 10
	maxAnswer      = 16 << 20 // an answer's body (a status with many files)
)

// Listen starts the server of node name on addr (HOST:PORT).
func Listen(addr, name string, key Key, log *slog.Logger) (*Server, error) {
	return ListenLimited(addr, name, key, log, DefaultLimits())
}

// ListenLimited is Listen with limits on connections.
func ListenLimited(addr, name string, key Key, log *slog.Logger, lim Limits) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("node RPC on %s: %w", addr, err)
	}
	s := &Server{name: name, key: key, log: log, mux: http.NewServeMux(), nonces: map[string]time.Time{}}
	s.ln = newLimitListener(ln, lim, s.refused)
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: headerTimeout, ReadTimeout: bodyTimeout,
		IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeader,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go s.srv.Serve(s.ln)
	return s, nil
}

// refused logs refusals, at most one line a second with the count since.
func (s *Server) refused(from, caller, path string, err error) {
	s.mu.Lock()
	s.refusals++
	now := time.Now()
	if now.Sub(s.lastRefLog) < time.Second {
		s.mu.Unlock()
		return
	}
	n := s.refusals
	s.refusals, s.lastRefLog = 0, now
	s.mu.Unlock()
	s.log.Warn("node RPC refused", "from", from, "caller", caller, "path", path, "reason", err, "refused_since_last_line", n)
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server; calls in progress are cancelled.
func (s *Server) Close() error { return s.srv.Close() }

// ErrTooLarge: a signed body past the bound of its path.
var ErrTooLarge = errors.New("request body too large")

// Handle registers fn for path, with bodies of at most DefaultMaxBody.
func (s *Server) Handle(path string, fn Handler) { s.HandleLimit(path, DefaultMaxBody, fn) }

// HandleLimit registers fn for path, with bodies of at most maxBody bytes.
func (s *Server) HandleLimit(path string, maxBody int64, fn Handler) {
	s.mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		caller, nonce := r.Header.Get(hNode), r.Header.Get(hNonce)
		var out []byte
		status := http.StatusOK
		refuse := func(err error) {
			s.refused(r.RemoteAddr, caller, path, err)
			out, _ = json.Marshal(&RemoteError{Msg: err.Error()})
			// The unread body goes with the connection.
			w.Header().Set("Connection", "close")
			s.answer(w, nonce, http.StatusUnauthorized, out)
		}
		if err := s.verify(r); err != nil {
			refuse(err)
			return
		}
		if r.ContentLength > maxBody {
			refuse(fmt.Errorf("%w: %d bytes, at most %d on %s", ErrTooLarge, r.ContentLength, maxBody, path))
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			return
		}
		if int64(len(body)) > maxBody {
			refuse(fmt.Errorf("%w: more than %d bytes on %s", ErrTooLarge, maxBody, path))
			return
		}
		if bodySum(body) != r.Header.Get(hBody) {
			refuse(fmt.Errorf("%w: body does not match its signed hash", ErrUnauthorized))
			return
		}
		res, err := fn(r.Context(), caller, body)
		if err != nil {
			var re *RemoteError
			if !errors.As(err, &re) {
				re = &RemoteError{Msg: err.Error()}
			}
			out, _ = json.Marshal(re)
			status = http.StatusConflict
		} else if out, err = json.Marshal(res); err != nil {
			out, _ = json.Marshal(&RemoteError{Msg: err.Error()})
			status = http.StatusInternalServerError
		}
		s.answer(w, nonce, status, out)
	})
}

// answer writes a signed answer: a caller accepts none that is not.
func (s *Server) answer(w http.ResponseWriter, nonce string, status int, out []byte) {
	sum := bodySum(out)
	w.Header().Set(hBody, sum)
	w.Header().Set(hSig, s.key.sign("answer", s.name, nonce, strconv.Itoa(status), sum))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(out)
}

// verify checks the signature of a call from its headers alone; the
// body is checked against the signed hash once read.
func (s *Server) verify(r *http.Request) error {
	caller, ts, nonce, sig, sum := r.Header.Get(hNode), r.Header.Get(hTime), r.Header.Get(hNonce), r.Header.Get(hSig), r.Header.Get(hBody)
	if caller == "" || ts == "" || nonce == "" || sig == "" || len(sum) != 64 {
		return ErrUnauthorized
	}
	want := s.key.sign("call", s.name, r.Method, r.URL.Path, caller, ts, nonce, sum)
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return ErrUnauthorized
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrUnauthorized
	}
	if d := time.Since(time.Unix(0, n)); d > skew || d < -skew {
		return fmt.Errorf("%w: clock off by %s", ErrUnauthorized, d.Round(time.Second))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for k, t := range s.nonces {
		if now.Sub(t) > 2*skew {
			delete(s.nonces, k)
		}
	}
	if _, seen := s.nonces[nonce]; seen {
		return fmt.Errorf("%w: replayed", ErrUnauthorized)
	}
	s.nonces[nonce] = now
	return nil
}

// Client signs calls as node self.
type Client struct {
	self string
	key  Key
	http *http.Client
}

// NewClient returns a client that calls as node self.
func NewClient(self string, key Key) *Client {
	return &Client{self: self, key: key, http: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}}}
}

// Call posts req to path on node to, at addr, and decodes the answer into
// resp (if not nil). A handler's error comes back as *RemoteError; an
// answer not signed by a holder of the key for this call, as ErrBadAnswer.
func (c *Client) Call(ctx context.Context, to, addr, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	var nb [16]byte
	rand.Read(nb[:])
	nonce, ts := hex.EncodeToString(nb[:]), strconv.FormatInt(time.Now().UnixNano(), 10)
	hr.Header.Set(hNode, c.self)
	hr.Header.Set(hTime, ts)
	hr.Header.Set(hNonce, nonce)
	hr.Header.Set(hBody, bodySum(body))
	hr.Header.Set(hSig, c.key.sign("call", to, http.MethodPost, path, c.self, ts, nonce, bodySum(body)))
	r, err := c.http.Do(hr)
	if err != nil {
		return fmt.Errorf("node RPC %s%s: %w", addr, path, err)
	}
	defer r.Body.Close()
	// The answer's signature is checked from its headers before its body
	// is read: a peer without the key costs no memory.
	sum := r.Header.Get(hBody)
	want := c.key.sign("answer", to, nonce, strconv.Itoa(r.StatusCode), sum)
	if len(sum) != 64 || !hmac.Equal([]byte(r.Header.Get(hSig)), []byte(want)) {
		if r.StatusCode == http.StatusUnauthorized {
			// Refused by a node with another key (or not the node named):
			// said as a refusal, but nothing in it is trusted.
			return fmt.Errorf("node RPC %s%s: %w (%w)", addr, path, ErrUnauthorized, ErrBadAnswer)
		}
		return fmt.Errorf("node RPC %s%s: %w", addr, path, ErrBadAnswer)
	}
	out, err := io.ReadAll(io.LimitReader(r.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("node RPC %s%s: %w", addr, path, err)
	}
	if len(out) > maxAnswer || bodySum(out) != sum {
		return fmt.Errorf("node RPC %s%s: %w (body does not match its signed hash)", addr, path, ErrBadAnswer)
	}
	if r.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("node RPC %s%s: %w", addr, path, ErrUnauthorized)
	}
	if r.StatusCode != http.StatusOK {
		re := &RemoteError{}
		if json.Unmarshal(out, re) != nil || re.Msg == "" {
			re.Msg = fmt.Sprintf("HTTP %d", r.StatusCode)
		}
		return re
	}
	if resp != nil {
		return json.Unmarshal(out, resp)
	}
	return nil
}
