package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

type echo struct {
	Text string `json:"text"`
}

func serve(t *testing.T, key Key) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", key, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.Handle("/echo", func(ctx context.Context, caller string, req json.RawMessage) (any, error) {
		var in echo
		json.Unmarshal(req, &in)
		if in.Text == "fail" {
			return nil, Coded("nope", errors.New("asked to fail"))
		}
		return echo{Text: caller + ":" + in.Text}, nil
	})
	return s
}

func TestSignedCalls(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	s := serve(t, key)
	c := NewClient("n1", key)
	var out echo
	if err := c.Call(context.Background(), s.Addr(), "/echo", echo{"hi"}, &out); err != nil || out.Text != "n1:hi" {
		t.Fatalf("call: %+v %v", out, err)
	}
	err := c.Call(context.Background(), s.Addr(), "/echo", echo{"fail"}, &out)
	if CodeOf(err) != "nope" || !strings.Contains(err.Error(), "asked to fail") {
		t.Fatalf("handler error: %v", err)
	}
	// A caller with another key is refused.
	bad := NewClient("n9", NewKey([]byte("another key of thirty-two bytes!")))
	if err := bad.Call(context.Background(), s.Addr(), "/echo", echo{"hi"}, &out); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong key: %v", err)
	}
	// A server with another key cannot answer as a node.
	other := serve(t, NewKey([]byte("another key of thirty-two bytes!")))
	if err := c.Call(context.Background(), other.Addr(), "/echo", echo{"hi"}, &out); !errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrBadAnswer) {
		t.Fatalf("call to a server with another key: %v", err)
	}
	// An unsigned request is refused.
	r, err := http.Post("http://"+s.Addr()+"/echo", "application/json", strings.NewReader(`{"text":"x"}`))
	if err != nil || r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unsigned request: %v %v", r.StatusCode, err)
	}
}

func TestReplayRefused(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	s := serve(t, key)
	body := `{"text":"x"}`
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.Addr()+"/echo", strings.NewReader(body))
	ts, nonce := strconv.FormatInt(time.Now().UnixNano(), 10), "00112233445566778899aabbccddeeff"
	req.Header.Set(hNode, "n1")
	req.Header.Set(hTime, ts)
	req.Header.Set(hNonce, nonce)
	req.Header.Set(hSig, key.sign("call", "/echo", "n1", ts, nonce, bodySum([]byte(body))))
	r, err := http.DefaultClient.Do(req)
	if err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("first: %v %v", r.StatusCode, err)
	}
	req2, _ := http.NewRequest(http.MethodPost, "http://"+s.Addr()+"/echo", strings.NewReader(body))
	req2.Header = req.Header.Clone()
	r, err = http.DefaultClient.Do(req2)
	if err != nil || r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("replay: %v %v", r.StatusCode, err)
	}
}
