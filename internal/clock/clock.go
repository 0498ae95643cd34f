// Package clock gives the time by which a node judges its own lease.
//
// Go's monotonic clock is CLOCK_MONOTONIC, which stops while the host is
// suspended: a node resumed after an hour would believe the lease it
// renewed just before the suspend is still valid, while the others took
// its filesystems long ago. CLOCK_BOOTTIME runs on through a suspend.
package clock

import (
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
	"golang.org/x/sys/unix"
)

// Boot is the time since the host booted, suspended time included.
func Boot() time.Duration {
	id := int32(unix.CLOCK_BOOTTIME)
	if protect.Off(protect.BootClock) {
		id = unix.CLOCK_MONOTONIC
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(id, &ts); err != nil {
		panic("clock: CLOCK_BOOTTIME: " + err.Error()) // Linux has had it since 2.6.39
	}
	return time.Duration(ts.Nano())
}
