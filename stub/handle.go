package stub

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// A file handle names a backing file by identity, not by path (the handle
// DMAPI events carry): an event raised for a file that is renamed before
// the DM application gets to it still reaches that file, on any node that
// mounts the same backing filesystem. Encoded as the handle type (4 bytes,
// little endian) followed by the kernel's opaque handle.

// HandleOf returns the encoded file handle of the open file fd.
func HandleOf(fd int) ([]byte, error) {
	h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return nil, fmt.Errorf("file handle: %w", err)
	}
	return append(binary.LittleEndian.AppendUint32(nil, uint32(h.Type())), h.Bytes()...), nil
}

// ErrBadHandle: an encoded handle too short to hold one.
var ErrBadHandle = errors.New("malformed file handle")

// OpenHandle opens the file that handle names on the filesystem of the
// open directory mountFD (needs CAP_DAC_READ_SEARCH). A deleted file gives
// ESTALE.
func OpenHandle(mountFD int, handle []byte, flags int) (int, error) {
	if len(handle) <= 4 {
		return -1, ErrBadHandle
	}
	h := unix.NewFileHandle(int32(binary.LittleEndian.Uint32(handle)), handle[4:])
	fd, err := unix.OpenByHandleAt(mountFD, h, flags)
	if err != nil {
		return -1, fmt.Errorf("open by handle: %w", err)
	}
	return fd, nil
}
