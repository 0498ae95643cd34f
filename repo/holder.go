package repo

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// stoppedHolder returns the pid of a process of this same program that
// holds a lock on path and is stopped (state T), or 0. Only this program's
// own processes are considered: the repository is theirs.
func stoppedHolder(path string) int {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0
	}
	self, _ := os.Readlink("/proc/self/exe")
	// "1: FLOCK  ADVISORY  WRITE 4919 08:01:1234567 0 EOF"; the device is
	// MAJOR:MINOR in hex.
	want := fmt.Sprintf(":%d", st.Ino)
	dev := fmt.Sprintf("%02x:%02x", (st.Dev>>8)&0xfff, (st.Dev&0xff)|((st.Dev>>12)&0xfff00))
	for _, line := range strings.Split(string(locks), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || !strings.HasSuffix(f[5], want) || !strings.HasPrefix(f[5], dev+":") {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if exe, _ := os.Readlink(filepath.Join("/proc", f[4], "exe")); exe != self {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", f[4], "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) S ...": the state follows the last ')'.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'T' {
			return pid
		}
	}
	return 0
}
