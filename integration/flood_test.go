package integration

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// floodAttack is a caller without the key (run as a helper process, so
// its descriptors are its own): from the loopback addresses 127.0.0.FROM
// to 127.0.0.TO it opens CASCADEFS_FLOOD_IDLE connections to the node RPC
// address and keeps them, and sends CASCADEFS_FLOOD_BODIES unsigned calls
// with 16 MiB bodies at once, over and over, until killed. It prints
// "flooding" once everything is under way.
func floodAttack() {
	addr := os.Getenv("CASCADEFS_FLOOD_ADDR")
	idle, _ := strconv.Atoi(os.Getenv("CASCADEFS_FLOOD_IDLE"))
	bodies, _ := strconv.Atoi(os.Getenv("CASCADEFS_FLOOD_BODIES"))
	from, _ := strconv.Atoi(os.Getenv("CASCADEFS_FLOOD_FROM"))
	to, _ := strconv.Atoi(os.Getenv("CASCADEFS_FLOOD_TO"))
	ip := func(i int) net.IP { return net.IPv4(127, 0, 0, byte(from+i%(to-from+1))) }
	var conns []net.Conn
	for i := 0; i < idle; i++ {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip(i)}, Timeout: 2 * time.Second}
		if c, err := d.Dial("tcp", addr); err == nil {
			conns = append(conns, c)
		}
	}
	zeros := make([]byte, 1<<20)
	for i := 0; i < bodies; i++ {
		go func(i int) {
			tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip(i)}}).DialContext}
			cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			for {
				pr, pw := osPipe()
				go func() {
					for k := 0; k < 16; k++ {
						if _, err := pw.Write(zeros); err != nil {
							break
						}
					}
					pw.Close()
				}()
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/event", pr)
				req.ContentLength = 16 << 20
				if r, err := cl.Do(req); err == nil {
					r.Body.Close()
				}
				pr.Close()
			}
		}(i)
	}
	fmt.Printf("flooding: %d idle connections opened\n", len(conns))
	select {}
}

func osPipe() (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	return r, w
}

// procStatus reads a field of /proc/PID/status in kB.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field+":") {
			v, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return v
		}
	}
	return 0
}

func openFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// A caller without the key floods the owner's RPC port with unsigned 16
// MiB bodies and 20,000 idle connections from many addresses: the owner's
// memory and descriptors stay bounded, it keeps its lease and its
// filesystem, and stubs read through every node are served meanwhile.
func TestRPCFloodKeepsTheNode(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1", "n2")
	c.Start("n1", "n2")
	n1, n2 := c.Nodes["n1"], c.Nodes["n2"]
	owner, epoch := waitOwner(t, c, testenv.FSName, func(o string) bool { return o != "" })
	if owner != "n1" {
		t.Fatalf("owner %s, want n1", owner)
	}
	const files = 8
	want := map[string][32]byte{}
	var paths []string
	for i := range files {
		name := fmt.Sprintf("f%d", i)
		want[name] = writeRandom(t, n1.M(name), 3<<20+int64(i))
		paths = append(paths, n1.M(name))
	}
	c.MustCLI(append([]string{"migrate"}, paths...)...)
	testenv.DropCaches()
	rssBefore := procStatus(t, n1.PID(), "VmRSS")
	fdsBefore := openFDs(n1.PID())

	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.Dir, "flooder")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	var flooders []*exec.Cmd
	defer func() {
		for _, f := range flooders {
			syscall.Kill(-f.Process.Pid, syscall.SIGKILL)
			f.Wait()
		}
	}()
	// Two processes of 10,000 idle connections each (from 40 addresses)
	// and 50 bodies each.
	var ready sync.WaitGroup
	for k, span := range [][2]int{{2, 21}, {22, 41}} {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), "CASCADEFS_TEST_HELPER=rpc-flood", "CASCADEFS_FLOOD_ADDR="+n1.RPC,
			"CASCADEFS_FLOOD_IDLE=10000", "CASCADEFS_FLOOD_BODIES=50",
			fmt.Sprintf("CASCADEFS_FLOOD_FROM=%d", span[0]), fmt.Sprintf("CASCADEFS_FLOOD_TO=%d", span[1]))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		flooders = append(flooders, cmd)
		ready.Add(1)
		go func() {
			defer ready.Done()
			buf := make([]byte, 256)
			n, _ := out.Read(buf)
			t.Logf("flooder %d: %s", k, strings.TrimSpace(string(buf[:n])))
		}()
	}
	ready.Wait()

	// Meanwhile: reads of stubs through both nodes (n2's go to the owner
	// by the node RPC), over several leases.
	var peakRSS int64
	var peakFDs int
	deadline := time.Now().Add(12 * time.Second)
	read := 0
	for i := 0; time.Now().Before(deadline) || read < files; i++ {
		name := fmt.Sprintf("f%d", i%files)
		via := n1
		if i%2 == 1 {
			via = n2
		}
		if got := sumFile(t, via.M(name)); got != want[name] {
			t.Fatalf("%s read through %s during the flood: wrong bytes", name, via.Name)
		}
		read++
		if i%files == files-1 {
			testenv.DropCaches()
		}
		peakRSS = max(peakRSS, procStatus(t, n1.PID(), "VmRSS"))
		peakFDs = max(peakFDs, openFDs(n1.PID()))
	}
	newOwner, newEpoch := fsOwner(t, c, testenv.FSName)
	t.Logf("n1: RSS %d kB before, peak %d kB during the flood; descriptors %d before, peak %d; %d reads served",
		rssBefore, peakRSS, fdsBefore, peakFDs, read)
	if newOwner != "n1" || newEpoch != epoch {
		t.Fatalf("the flood moved the filesystem: owner %s epoch %d, was n1 epoch %d", newOwner, newEpoch, epoch)
	}
	if peakRSS > rssBefore+200<<10 {
		t.Fatalf("n1 grew from %d kB to %d kB under the flood", rssBefore, peakRSS)
	}
	if peakFDs > fdsBefore+1200 {
		t.Fatalf("n1 held %d descriptors under the flood (%d before)", peakFDs, fdsBefore)
	}
	for _, bad := range []string{"too many open files", "lease lapsed", "fenc"} {
		if strings.Contains(strings.ToLower(n1.Log()), bad) {
			t.Fatalf("n1 log mentions %q under the flood:\n%s", bad, n1.Log())
		}
	}
	if !strings.Contains(n1.Log(), "node RPC refused") {
		t.Fatalf("the flood was not refused (or not logged):\n%s", n1.Log())
	}
}
