package daemon

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"golang.org/x/sys/unix"
)

// A mount is refused when its directories overlap (DESIGN.md, invariant 7):
// a backing directory inside the mountpoint makes the daemon serve its own
// mount (every stat then hangs), and a directory archive inside the backing
// tree gets its own objects migrated and punched. Paths are compared after
// resolving symlinks.

// Dir is a directory of a mount's layout, named for the refusal.
type Dir struct {
	What, Path string
	// resolved: Path is resolved already and must not be looked at
	// again (a mountpoint: a stat of a stopped daemon's mount hangs).
	resolved bool
}

// checkPlaces resolves cfg's mountpoint (without touching a mount there)
// and refuses an unsafe layout or, unless allowed, a backing directory
// that other users can reach. It runs before anything is created.
func checkPlaces(cfg *Config) error {
	mp, err := resolveMountpoint(cfg.Mountpoint)
	if err != nil {
		return err
	}
	cfg.Mountpoint = mp
	dirs := []Dir{{"mountpoint", mp, true}, {"backing directory", cfg.Backing, false}}
	for _, raw := range archive.URLs(cfg.ArchiveURL) {
		if u, err := url.Parse(raw); err == nil && u.Scheme == "file" {
			dirs = append(dirs, Dir{"archive directory", u.Path, false})
		}
	}
	if cfg.StateDir != "" {
		dirs = append(dirs, Dir{"state directory", cfg.StateDir, false})
	}
	if err := CheckLayout(dirs); err != nil {
		return err
	}
	if !cfg.AllowUserBacking {
		return CheckPrivate(cfg.Backing)
	}
	return nil
}

// CheckLayout refuses any two directories that are the same or one inside
// the other.
func CheckLayout(dirs []Dir) error {
	resolved := make([]string, len(dirs))
	for i, d := range dirs {
		if d.Path == "" {
			continue
		}
		p, err := d.Path, error(nil)
		if !d.resolved {
			p, err = resolve(d.Path)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", d.What, d.Path, err)
		}
		resolved[i] = p
	}
	for i := range dirs {
		for j := range dirs {
			if i == j || resolved[i] == "" || resolved[j] == "" {
				continue
			}
			a, b := resolved[i], resolved[j]
			if a == b && i < j {
				return fmt.Errorf("the %s and the %s are the same directory (%s); give each its own", dirs[i].What, dirs[j].What, a)
			}
			if a != b && inside(b, a) {
				return fmt.Errorf("the %s %s is inside the %s %s; keep them apart (%s)", dirs[j].What, b, dirs[i].What, a, why(dirs[i].What, dirs[j].What))
			}
		}
	}
	return nil
}

func why(outer, inner string) string {
	switch {
	case outer == "mountpoint":
		return "the daemon would serve its own mount"
	case outer == "backing directory" && inner == "archive directory":
		return "the archive's own objects would be migrated and punched"
	case outer == "backing directory":
		return "users of the mount would see and change the daemon's own files"
	}
	return "one would be managed as part of the other"
}

// inside reports whether p lies inside dir (not dir itself).
func inside(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && filepath.IsLocal(rel)
}

// resolve makes p absolute with every symlink of its existing part
// resolved; a part that does not exist yet (or a dead mount) is kept as
// written.
func resolve(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	var rest []string
	for cur := abs; ; {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(append([]string{r}, rest...)...), nil
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return abs, nil
		}
		rest = append([]string{filepath.Base(cur)}, rest...)
		cur = parent
	}
}

// resolveMountpoint resolves the symlinks of mountpoint, but only looks
// at its last component when no filesystem is mounted there: a stat of a
// FUSE mount whose daemon is stopped would never return.
func resolveMountpoint(mountpoint string) (string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", err
	}
	parent, err := resolve(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	p := filepath.Join(parent, filepath.Base(abs))
	if mounted, err := isMountpoint(p); err != nil || mounted {
		return p, err
	}
	return resolve(p)
}

// isMountpoint reports whether anything is mounted at p (mountinfo).
func isMountpoint(p string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == p {
			return true, nil
		}
	}
	return false, nil
}

// ErrReachable: a backing directory that users other than root can reach.
var ErrReachable = errors.New("users other than root can reach the backing directory")

// CheckPrivate refuses a backing directory that users other than root can
// reach, by a search bit for group or others on it and on every directory
// above it. Users must only use the mount: through the backing tree they
// can swap names under the daemon's feet, copy stub records, and read
// files whose owner the mount would stop them reading.
func CheckPrivate(backing string) error {
	p, err := resolve(backing)
	if err != nil {
		return err
	}
	for dir := p; ; dir = filepath.Dir(dir) {
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return fmt.Errorf("backing directory %s: %w", backing, err)
		}
		// Closed to others at this level: nothing below is reachable
		// (a group that is not root's counts as others).
		open := st.Mode&0o001 != 0 || (st.Mode&0o010 != 0 && st.Gid != 0) || st.Uid != 0
		if !open {
			return nil
		}
		if dir == "/" {
			break
		}
	}
	return fmt.Errorf("%w: %s and every directory above it let other users in; users must only use the mount "+
		"(through the backing tree they could swap names under the daemon and copy stub records): "+
		"chmod 700 a directory above it, such as %s, or pass --allow-user-backing", ErrReachable, p, filepath.Dir(p))
}

// mountLive asks the kernel whether the FUSE mount at mountpoint still has
// its server: statfs always goes to the server (no cache), and a mount
// whose server died fails it with ENOTCONN. A server that does not answer
// in time (stopped, or busy) counts as live: its mount is not taken.
func mountLive(mountpoint string) bool {
	done := make(chan error, 1)
	go func() {
		var s unix.Statfs_t
		done <- unix.Statfs(mountpoint, &s)
	}()
	select {
	case err := <-done:
		return !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ECONNABORTED)
	case <-time.After(2 * time.Second):
		return true
	}
}
