package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

type echo struct {
	Text string `json:"text"`
}

func serve(t *testing.T, name string, key Key) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", name, key, slog.Default())
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
	s := serve(t, "s", key)
	c := NewClient("n1", key)
	var out echo
	if err := c.Call(context.Background(), "s", s.Addr(), "/echo", echo{"hi"}, &out); err != nil || out.Text != "n1:hi" {
		t.Fatalf("call: %+v %v", out, err)
	}
	err := c.Call(context.Background(), "s", s.Addr(), "/echo", echo{"fail"}, &out)
	if CodeOf(err) != "nope" || !strings.Contains(err.Error(), "asked to fail") {
		t.Fatalf("handler error: %v", err)
	}
	// A caller with another key is refused.
	bad := NewClient("n9", NewKey([]byte("another key of thirty-two bytes!")))
	if err := bad.Call(context.Background(), "s", s.Addr(), "/echo", echo{"hi"}, &out); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong key: %v", err)
	}
	// A server with another key cannot answer as a node.
	other := serve(t, "s", NewKey([]byte("another key of thirty-two bytes!")))
	if err := c.Call(context.Background(), "s", other.Addr(), "/echo", echo{"hi"}, &out); !errors.Is(err, ErrBadAnswer) {
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
	s := serve(t, "s", key)
	body := `{"text":"x"}`
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.Addr()+"/echo", strings.NewReader(body))
	ts, nonce := strconv.FormatInt(time.Now().UnixNano(), 10), "00112233445566778899aabbccddeeff"
	req.Header.Set(hNode, "n1")
	req.Header.Set(hTime, ts)
	req.Header.Set(hNonce, nonce)
	req.Header.Set(hBody, bodySum([]byte(body)))
	req.Header.Set(hSig, key.sign("call", "s", http.MethodPost, "/echo", "n1", ts, nonce, bodySum([]byte(body))))
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

// A call signed for one node, or one endpoint, is refused by another node
// or at another endpoint of the same key.
func TestCallBoundToNodeAndPath(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	s1, s2 := serve(t, "s1", key), serve(t, "s2", key)
	s2.Handle("/other", func(ctx context.Context, caller string, req json.RawMessage) (any, error) { return echo{"other"}, nil })
	c := NewClient("n1", key)
	var out echo
	if err := c.Call(context.Background(), "s2", s1.Addr(), "/echo", echo{"hi"}, &out); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("call for s2 sent to s1: %v", err)
	}
	body := `{"text":"x"}`
	ts, nonce := strconv.FormatInt(time.Now().UnixNano(), 10), "0123456789abcdef0123456789abcdef"
	sig := key.sign("call", "s2", http.MethodPost, "/echo", "n1", ts, nonce, bodySum([]byte(body)))
	req, _ := http.NewRequest(http.MethodPost, "http://"+s2.Addr()+"/other", strings.NewReader(body))
	req.Header.Set(hNode, "n1")
	req.Header.Set(hTime, ts)
	req.Header.Set(hNonce, nonce)
	req.Header.Set(hSig, sig)
	req.Header.Set(hBody, bodySum([]byte(body)))
	r, err := http.DefaultClient.Do(req)
	if err != nil || r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("call for /echo sent to /other: %v %v", r.StatusCode, err)
	}
}

// Answers without the key's signature are refused, error answers too: a
// forged "not owner" or refusal must not steer the caller.
func TestUnsignedAnswersRefused(t *testing.T) {
	key := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	for _, status := range []int{http.StatusOK, http.StatusConflict, http.StatusUnauthorized} {
		fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			w.Write([]byte(`{"code":"not-owner","error":"forged","text":"forged"}`))
		}))
		var out echo
		err := NewClient("n1", key).Call(context.Background(), "s", strings.TrimPrefix(fake.URL, "http://"), "/echo", echo{"hi"}, &out)
		fake.Close()
		if !errors.Is(err, ErrBadAnswer) || CodeOf(err) != "" || out.Text != "" {
			t.Errorf("status %d unsigned: %v, code %q, out %+v", status, err, CodeOf(err), out)
		}
	}
}
