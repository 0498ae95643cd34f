package clock

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Boot runs forward with real time and is never behind CLOCK_MONOTONIC
// (it is that clock plus the time spent suspended).
func TestBootRunsForward(t *testing.T) {
	var mono unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
	a := Boot()
	if a < time.Duration(mono.Nano()) {
		t.Fatalf("boot time %v is behind the monotonic clock %v", a, time.Duration(mono.Nano()))
	}
	time.Sleep(20 * time.Millisecond)
	if d := Boot() - a; d < 20*time.Millisecond || d > 5*time.Second {
		t.Fatalf("20 ms of sleep took %v by the boot clock", d)
	}
}
