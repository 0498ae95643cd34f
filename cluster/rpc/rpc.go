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
	skew   = 60 * time.Second // accepted clock difference, and how long nonces are remembered
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

// Server answers signed requests.
type Server struct {
	name   string // this node: calls must be signed for it
	key    Key
	log    *slog.Logger
	mux    *http.ServeMux
	srv    *http.Server
	ln     net.Listener
	mu     sync.Mutex
	nonces map[string]time.Time
}

// Listen starts the server of node name on addr (HOST:PORT).
func Listen(addr, name string, key Key, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("node RPC on %s: %w", addr, err)
	}
	s := &Server{name: name, key: key, log: log, mux: http.NewServeMux(), ln: ln, nonces: map[string]time.Time{}}
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server; calls in progress are cancelled.
func (s *Server) Close() error { return s.srv.Close() }

// Handle registers fn for path.
func (s *Server) Handle(path string, fn Handler) {
	s.mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			return
		}
		caller, nonce := r.Header.Get(hNode), r.Header.Get(hNonce)
		var out []byte
		status := http.StatusOK
		if err := s.verify(r, body); err != nil {
			s.log.Warn("node RPC refused", "from", r.RemoteAddr, "caller", caller, "path", path, "reason", err)
			out, _ = json.Marshal(&RemoteError{Msg: err.Error()})
			s.answer(w, nonce, http.StatusUnauthorized, out)
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
	w.Header().Set(hSig, s.key.sign("answer", s.name, nonce, strconv.Itoa(status), bodySum(out)))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(out)
}

func (s *Server) verify(r *http.Request, body []byte) error {
	caller, ts, nonce, sig := r.Header.Get(hNode), r.Header.Get(hTime), r.Header.Get(hNonce), r.Header.Get(hSig)
	if caller == "" || ts == "" || nonce == "" || sig == "" {
		return ErrUnauthorized
	}
	want := s.key.sign("call", s.name, r.Method, r.URL.Path, caller, ts, nonce, bodySum(body))
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
	hr.Header.Set(hSig, c.key.sign("call", to, http.MethodPost, path, c.self, ts, nonce, bodySum(body)))
	r, err := c.http.Do(hr)
	if err != nil {
		return fmt.Errorf("node RPC %s%s: %w", addr, path, err)
	}
	defer r.Body.Close()
	out, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("node RPC %s%s: %w", addr, path, err)
	}
	want := c.key.sign("answer", to, nonce, strconv.Itoa(r.StatusCode), bodySum(out))
	if !hmac.Equal([]byte(r.Header.Get(hSig)), []byte(want)) {
		if r.StatusCode == http.StatusUnauthorized {
			// Refused by a node with another key (or not the node named):
			// said as a refusal, but nothing in it is trusted.
			return fmt.Errorf("node RPC %s%s: %w (%w)", addr, path, ErrUnauthorized, ErrBadAnswer)
		}
		return fmt.Errorf("node RPC %s%s: %w", addr, path, ErrBadAnswer)
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
