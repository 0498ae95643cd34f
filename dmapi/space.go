package dmapi

import (
	"errors"
	"time"
)

// Space is a filesystem's space as its monitor last measured it.
type Space struct {
	Usage    int64 `json:"usage"`    // allocated bytes
	Capacity int64 `json:"capacity"` // the quota, or the backing filesystem's size
	// Quota is set when the filesystem has one; usage then counts the
	// backing tree's blocks (what du reports), else the whole backing
	// filesystem's.
	Quota int64 `json:"quota,omitempty"`
	// HighBytes is the high threshold in bytes: past it the monitor migrates.
	HighBytes  int64     `json:"high_bytes,omitempty"`
	MeasuredAt time.Time `json:"measured_at"`
}

// ErrNoSpace answers an out-of-space event when the space monitor could
// not free enough: the writer gets ENOSPC.
var ErrNoSpace = errors.New("no space left: the space monitor could not free enough")
