package secret

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRule(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("s3cret"), 0o600)
	if b, err := Read("key file", good); err != nil || string(b) != "s3cret" {
		t.Fatalf("a 0600 file of ours: %q %v", b, err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o660} {
		p := filepath.Join(dir, "m"+mode.String())
		os.WriteFile(p, []byte("x"), mode)
		os.Chmod(p, mode)
		_, err := Read("credentials file", p)
		if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "chmod 600") || !strings.Contains(err.Error(), "credentials file") {
			t.Errorf("mode %o: %v", mode, err)
		}
	}
	link := filepath.Join(dir, "link")
	os.Symlink(good, link)
	if _, err := Read("key file", link); !errors.Is(err, ErrUnsafe) {
		t.Errorf("symlink: %v", err)
	}
	if _, err := Read("key file", dir); !errors.Is(err, ErrUnsafe) {
		t.Errorf("directory: %v", err)
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(dir, "other")
		os.WriteFile(other, []byte("x"), 0o600)
		os.Chown(other, 65534, 65534)
		if _, err := Read("etcd password file", other); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("owned by another user: %v", err)
		}
	}
	if _, err := Read("key file", filepath.Join(dir, "missing")); err == nil || errors.Is(err, ErrUnsafe) {
		t.Errorf("missing file: %v", err)
	}
}
