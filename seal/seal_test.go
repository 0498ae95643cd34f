package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func ring(t *testing.T, lines ...string) *Keyring {
	t.Helper()
	r, err := Parse("keys", []byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestKeyFile(t *testing.T) {
	a, b := NewKey(), NewKey()
	r := ring(t, "# archive keys", "", a, b)
	if ra := ring(t, a); r.Current().ID != ra.Current().ID {
		t.Fatal("the first key is not the current one")
	}
	if _, err := r.Find(ring(t, b).Current().ID); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "# nothing", "cascadefs-archive-key-1:short", strings.TrimPrefix(a, keyPrefix)} {
		if _, err := Parse("keys", []byte(bad)); err == nil {
			t.Errorf("key file %q accepted", bad)
		}
	}
	_, err := r.Find(ID{1})
	if !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "0100000000000000, which the key file keys does not hold") {
		t.Errorf("missing key: %v", err)
	}
	var none *Keyring
	if _, err := none.Find(ID{1}); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "no encryption-key-file is set") {
		t.Errorf("no key file: %v", err)
	}
}

// A chunk opens only with its key, salt, object name and index.
func TestChunksAreBound(t *testing.T) {
	k := ring(t, NewKey()).Current()
	other := ring(t, NewKey()).Current()
	salt := NewSalt()
	obj, _ := k.Object(salt, "fs/1/1")
	plain := bytes.Repeat([]byte("secret"), 1000)
	sealed := obj.Seal(nil, plain, 7)
	if len(sealed) != len(plain)+Overhead || bytes.Contains(sealed, []byte("secret")) {
		t.Fatalf("sealed chunk: %d bytes", len(sealed))
	}
	if got, err := obj.Open(nil, sealed, 7); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %v", err)
	}
	wrong := map[string]*Object{}
	wrong["other key"], _ = other.Object(salt, "fs/1/1")
	wrong["other salt"], _ = k.Object(NewSalt(), "fs/1/1")
	wrong["other object"], _ = k.Object(salt, "fs/1/2")
	for what, o := range wrong {
		if _, err := o.Open(nil, sealed, 7); !errors.Is(err, ErrOpen) {
			t.Errorf("%s opened the chunk", what)
		}
	}
	if _, err := obj.Open(nil, sealed, 8); !errors.Is(err, ErrOpen) {
		t.Error("the chunk opened at another index")
	}
	sealed[3] ^= 1
	if _, err := obj.Open(nil, sealed, 7); !errors.Is(err, ErrOpen) {
		t.Error("an altered chunk opened")
	}
}

func TestBlobs(t *testing.T) {
	r := ring(t, NewKey())
	plain := []byte(`{"path":"secret/plans.txt"}`)
	sealed, err := r.SealBlob("fs/1/1.meta", plain)
	if err != nil || !IsSealedBlob(sealed) || bytes.Contains(sealed, []byte("secret")) {
		t.Fatalf("sealed blob: %v %q", err, sealed)
	}
	if got, err := r.OpenBlob("fs/1/1.meta", sealed); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open blob: %v", err)
	}
	if _, err := r.OpenBlob("fs/2/1.meta", sealed); !errors.Is(err, ErrOpen) {
		t.Errorf("a blob opened under another name: %v", err)
	}
	if _, err := ring(t, NewKey()).OpenBlob("fs/1/1.meta", sealed); !errors.Is(err, ErrNoKey) {
		t.Errorf("a blob opened without its key: %v", err)
	}
	var none *Keyring
	if got, err := none.SealBlob("x", plain); err != nil || !bytes.Equal(got, plain) {
		t.Error("no keyring: a blob is not left as it is")
	}
	if got, err := r.OpenBlob("x", plain); err != nil || !bytes.Equal(got, plain) {
		t.Error("a blob written in the clear does not read")
	}
}
