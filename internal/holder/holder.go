// Package holder finds, on this host, a process of this same program that
// holds a lock others wait for while it is stopped (SIGSTOP, a frozen
// process of a paused VM), so that the waiter can end it as a crash would:
// a stopped holder would otherwise make every waiter wait for as long as
// it stays stopped. Only this program's own processes are considered.
package holder

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stopped reports whether process pid is stopped (state T or t).
func Stopped(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && (stat[i+2] == 'T' || stat[i+2] == 't')
}

// sameProgram reports whether pid runs this program (not this process).
func sameProgram(pid int) bool {
	if pid <= 0 || pid == os.Getpid() {
		return false
	}
	self, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return false
	}
	exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
	return exe == self
}

// devString is a device as /proc/locks and fdinfo print it (hex MAJOR:MINOR).
func devString(dev uint64) string {
	return fmt.Sprintf("%02x:%02x", (dev>>8)&0xfff, (dev&0xff)|((dev>>12)&0xfff00))
}

// StoppedFlockHolder returns the pid of a stopped process of this program
// that holds a flock on path, or 0 (flocks show their pid in /proc/locks).
func StoppedFlockHolder(path string) int {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0
	}
	want := fmt.Sprintf("%s:%d", devString(st.Dev), st.Ino)
	for _, line := range strings.Split(string(locks), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || f[5] != want {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err == nil && sameProgram(pid) && Stopped(pid) {
			return pid
		}
	}
	return 0
}

// StoppedOFDHolder returns the pid of a stopped process of this program
// that holds an OFD lock covering byte offset of the file fd names, or 0.
// OFD locks show no pid in /proc/locks: the stopped processes' own
// descriptors of that file are looked at (their fdinfo lists the locks of
// each open file description).
func StoppedOFDHolder(fd int, offset int64) int {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0
	}
	file := fmt.Sprintf("%s:%d", devString(st.Dev), st.Ino)
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || !sameProgram(pid) || !Stopped(pid) {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, e := range fds {
			var fst syscall.Stat_t
			if syscall.Stat(filepath.Join("/proc", p.Name(), "fd", e.Name()), &fst) != nil || fst.Dev != st.Dev || fst.Ino != st.Ino {
				continue
			}
			info, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "fdinfo", e.Name()))
			if holdsAt(string(info), file, offset) {
				return pid
			}
		}
	}
	return 0
}

// holdsAt reports whether fdinfo text lists a lock of file covering offset:
// "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:1234 START END".
func holdsAt(info, file string, offset int64) bool {
	for _, line := range strings.Split(info, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "lock:" || f[6] != file {
			continue
		}
		start, err1 := strconv.ParseInt(f[7], 10, 64)
		end, err2 := strconv.ParseInt(f[8], 10, 64)
		if f[8] == "EOF" {
			end, err2 = 1<<63-1, nil
		}
		if err1 == nil && err2 == nil && start <= offset && offset <= end {
			return true
		}
	}
	return false
}

// Watch follows the stopped holders one waiter sees: Kill ends a holder
// once this waiter has seen it stopped for grace.
type Watch struct {
	Grace time.Duration
	pid   int
	since time.Time
}

// Saw notes the stopped holder found now (0: none), and ends it once it
// has stayed stopped for the grace; it returns the pid it killed, or 0.
func (w *Watch) Saw(pid int) int {
	switch {
	case pid == 0 || pid != w.pid:
		w.pid, w.since = pid, time.Now()
	case time.Since(w.since) >= w.Grace:
		syscall.Kill(pid, syscall.SIGKILL)
		w.pid = 0
		return pid
	}
	return 0
}
