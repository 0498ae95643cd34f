package stub

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// XattrName is where the record lives on the backing file. The FUSE layer
// hides every attribute under XattrPrefix from users of the mount.
const (
	XattrPrefix = "user.cascadefs."
	XattrName   = XattrPrefix + "stub"
)

// ReadRecord returns the record of the open backing file, or nil when the
// file has none (it is resident). A record that does not decode is an error
// wrapping ErrCorrupt or ErrVersion: never trusted, never ignored.
func ReadRecord(fd int) (*Record, error) {
	buf := make([]byte, 4096)
	for {
		n, err := unix.Fgetxattr(fd, XattrName, buf)
		switch {
		case errors.Is(err, unix.ENODATA):
			return nil, nil
		case errors.Is(err, unix.ERANGE):
			buf = make([]byte, 2*len(buf))
			if len(buf) > 1<<20 {
				return nil, fmt.Errorf("%w: oversized", ErrCorrupt)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("read stub record: %w", err)
		}
		return Decode(buf[:n])
	}
}

// WriteRecord stores the record on the open backing file.
func WriteRecord(fd int, r *Record) error {
	b, err := r.Encode()
	if err != nil {
		return err
	}
	if err := unix.Fsetxattr(fd, XattrName, b, 0); err != nil {
		return fmt.Errorf("write stub record: %w", err)
	}
	return nil
}

// RemoveRecord makes the file resident. Removing a missing record is fine.
func RemoveRecord(fd int) error {
	if err := unix.Fremovexattr(fd, XattrName); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove stub record: %w", err)
	}
	return nil
}

// punchSlack extends the punched range past EOF so that the last partial
// block is deallocated, not merely zeroed (ext4 and xfs zero partial blocks
// in place, which would read back as data).
const punchSlack = 1 << 20

// Punch releases all data blocks of the file, keeping its size, and checks
// that no data remains.
func Punch(fd int, size int64) error {
	if size > 0 {
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size+punchSlack); err != nil {
			return fmt.Errorf("punch: %w", err)
		}
	}
	if off, err := unix.Seek(fd, 0, unix.SEEK_DATA); err == nil {
		return fmt.Errorf("punch: data remains at offset %d", off)
	} else if !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("punch: seek data: %w", err)
	}
	return nil
}

// FirstHole returns the first offset in [off, end) that is a hole in the
// backing file, or end when the whole range holds data. In a migrated file
// the holes are exactly the regions still in the archive: recalled bytes are
// written whole and only after verification, so any data block is correct.
func FirstHole(fd int, off, end int64) (int64, error) {
	if off >= end {
		return end, nil
	}
	h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if errors.Is(err, unix.ENXIO) { // off is at or past EOF
		return end, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seek hole: %w", err)
	}
	return min(h, end), nil
}

// NextData returns the first offset in [off, end) that holds data, or end.
func NextData(fd int, off, end int64) (int64, error) {
	if off >= end {
		return end, nil
	}
	d, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return end, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seek data: %w", err)
	}
	return min(d, end), nil
}

// ResidentBytes counts the bytes of [0, size) that hold data.
func ResidentBytes(fd int, size int64) (int64, error) {
	var total int64
	for off := int64(0); off < size; {
		d, err := NextData(fd, off, size)
		if err != nil || d >= size {
			return total, err
		}
		h, err := FirstHole(fd, d, size)
		if err != nil {
			return total, err
		}
		total += h - d
		off = h
	}
	return total, nil
}

// MtimeNs is the modification time of st in nanoseconds.
func MtimeNs(st *unix.Stat_t) int64 { return st.Mtim.Sec*1e9 + st.Mtim.Nsec }

// Unchanged reports whether the file still matches the record's copy.
func (r *Record) Unchanged(st *unix.Stat_t) bool {
	return st.Size == r.Size && MtimeNs(st) == r.MtimeNs && st.Ino == r.Ino
}

// RestoreTimes puts back atime and mtime after invisible writes, so that
// recall does not look like a change to users or to the next migration.
func RestoreTimes(fd int, st *unix.Stat_t) error {
	ts := []unix.Timespec{unix.Timespec(st.Atim), unix.Timespec(st.Mtim)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), ts, 0); err != nil {
		return fmt.Errorf("restore times: %w", err)
	}
	return nil
}

// IsCorrupt reports an error that means "the record cannot be trusted", as
// opposed to an I/O failure.
func IsCorrupt(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrVersion) || errors.Is(err, ErrNotStub)
}
