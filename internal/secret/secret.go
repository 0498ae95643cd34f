// Package secret reads the files that hold secrets (the cluster key, the
// archive credentials, the etcd password and client key) under one rule:
// a regular file owned by the user the daemon runs as (root), with no
// access for group or others. A file that breaks the rule is refused with
// a sentence that says how to mend it; nothing of it is read.
package secret

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrUnsafe: a secret file that others could read or change.
var ErrUnsafe = errors.New("unsafe secret file")

// Read checks the secret file path (what names it in errors, such as
// "key file") and returns its contents, read through the descriptor that
// was checked.
func Read(what, path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s %s: %w: it is a symlink; name the file itself", what, path, ErrUnsafe)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	if err := check(what, path, f); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return b, nil
}

// Check applies the rule to path without keeping what it reads: for
// files that another library opens by name (a TLS key).
func Check(what, path string) error {
	_, err := Read(what, path)
	return err
}

func check(what, path string, f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s %s: %w: not a regular file", what, path, ErrUnsafe)
	}
	if me := uint32(os.Geteuid()); st.Uid != me {
		return fmt.Errorf("%s %s: %w: owned by uid %d, not by uid %d that runs cascadefs, so its owner can read or change it (chown %d %s)",
			what, path, ErrUnsafe, st.Uid, me, me, path)
	}
	if perm := st.Mode & 0o777; perm&0o077 != 0 {
		return fmt.Errorf("%s %s: %w: group or others may use it (mode %o); chmod 600 %s", what, path, ErrUnsafe, perm, path)
	}
	return nil
}
