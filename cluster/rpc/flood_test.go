package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An unsigned call is refused from its headers, before any of its body
// is sent: the server does not wait for (or keep) a body it would refuse,
// so a flood of 16 MiB bodies costs it nothing. A signed call past its
// path's bound is refused the same way.
func TestUnsignedBodyNotRead(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	s := serve(t, "s", key)
	for _, signed := range []bool{false, true} {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		head := "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 16777216\r\n"
		if signed {
			ts, nonce := strconv.FormatInt(time.Now().UnixNano(), 10), fmt.Sprintf("%032x", 7)
			sum := strings.Repeat("ab", 32)
			head += fmt.Sprintf("%s: n1\r\n%s: %s\r\n%s: %s\r\n%s: %s\r\n%s: %s\r\n", hNode, hTime, ts, hNonce, nonce, hBody, sum,
				hSig, key.sign("call", "s", http.MethodPost, "/echo", "n1", ts, nonce, sum))
		}
		fmt.Fprint(c, head+"\r\n") // and no body at all
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		r, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("signed=%v: no answer before the body: %v", signed, err)
		}
		if r.StatusCode != http.StatusUnauthorized || !r.Close {
			t.Fatalf("signed=%v: status %d, close %v", signed, r.StatusCode, r.Close)
		}
		c.Close()
	}
}

// A signed body that does not match its signed hash is refused.
func TestBodyMustMatchSignedHash(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	s := serve(t, "s", key)
	body := `{"text":"x"}`
	ts, nonce := strconv.FormatInt(time.Now().UnixNano(), 10), fmt.Sprintf("%032x", 9)
	sum := bodySum([]byte(`{"text":"y"}`))
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.Addr()+"/echo", strings.NewReader(body))
	req.Header.Set(hNode, "n1")
	req.Header.Set(hTime, ts)
	req.Header.Set(hNonce, nonce)
	req.Header.Set(hBody, sum)
	req.Header.Set(hSig, key.sign("call", "s", http.MethodPost, "/echo", "n1", ts, nonce, sum))
	r, err := http.DefaultClient.Do(req)
	if err != nil || r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("body swapped under its signature: %v %v", r, err)
	}
}

// Bodies are bounded per path: a signed call past its path's bound is
// refused, a large one within its bound served.
func TestBodyBoundPerPath(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	s := serve(t, "s", key)
	s.HandleLimit("/big", 1<<20, func(ctx context.Context, caller string, req json.RawMessage) (any, error) {
		return len(req), nil
	})
	c := NewClient("n1", key)
	big := strings.Repeat("x", 512<<10)
	var n int
	if err := c.Call(context.Background(), "s", s.Addr(), "/big", big, &n); err != nil || n < 512<<10 {
		t.Fatalf("512 KiB on a 1 MiB path: %d %v", n, err)
	}
	var out echo
	if err := c.Call(context.Background(), "s", s.Addr(), "/echo", echo{big}, &out); !errors.Is(err, ErrUnauthorized) ||
		!strings.Contains(err.Error(), "") {
		t.Fatalf("512 KiB on a 64 KiB path: %v", err)
	}
}

// Connections are bounded per peer address and in total; a trusted
// (member) address is served while others flood; refused connections give
// their slots back.
func TestConnectionLimits(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	member := net.ParseIP("127.0.0.1")
	s, err := ListenLimited("127.0.0.1:0", "s", key, discardLog(), Limits{Total: 20, PerPeer: 8,
		Trusted: func(ip net.IP) bool { return ip.Equal(member) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Handle("/echo", func(ctx context.Context, caller string, req json.RawMessage) (any, error) { return "ok", nil })
	dial := func(from string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: time.Second}
		c, err := d.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	open := func(c net.Conn) bool { // still held by the server?
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Connections that send nothing: the server holds them until the
	// header timeout, or hangs up at once when over a limit.
	settle := func(want int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for s.Connections() != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := s.Connections(); n != want {
			t.Fatalf("server holds %d connections, want %d", n, want)
		}
	}
	// 12 from one address: 8 held, 4 hung up on.
	for range 12 {
		conns = append(conns, dial("127.0.0.2"))
	}
	settle(8)
	if !open(conns[0]) || open(conns[11]) {
		t.Fatal("the first connection should be held and the twelfth closed")
	}
	// Three more addresses: the total (20) caps them.
	for _, ip := range []string{"127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		for range 8 {
			conns = append(conns, dial(ip))
		}
	}
	settle(20)
	// The member is served all the same.
	var out string
	if err := NewClient("n1", key).Call(context.Background(), "s", s.Addr(), "/echo", "x", &out); err != nil || out != "ok" {
		t.Fatalf("member call during the flood: %q %v", out, err)
	}
	// Closed connections give their slots back.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	deadline := time.Now().Add(5 * time.Second)
	for s.Connections() > 1 && time.Now().Before(deadline) { // the member's kept-alive one may stay
		time.Sleep(20 * time.Millisecond)
	}
	if n := s.Connections(); n > 1 {
		t.Fatalf("%d connections still counted after all closed", n)
	}
}

// A sender of slow headers is cut off after the header timeout.
func TestSlowHeadersCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("takes the header timeout")
	}
	s := serve(t, "s", NewKey([]byte("0123456789abcdef0123456789abcdef")))
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(3 * headerTimeout))
	_, err = bufio.NewReader(c).ReadString('\n')
	if err == nil || time.Since(start) > 2*headerTimeout {
		t.Fatalf("a slow sender of headers was kept %s (%v)", time.Since(start), err)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
