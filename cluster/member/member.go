// Package member is cluster membership over Serf: a node joins with its
// name, its RPC address and its load in tags, gossip encrypted with the
// cluster key; it learns who is alive, suspect, failed or gone.
package member

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/internal/secret"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Status of a member as this node sees it.
type Status string

const (
	Alive   Status = "alive"
	Suspect Status = "suspect" // missed probes; not yet declared failed
	Failed  Status = "failed"
	Leaving Status = "leaving"
	Left    Status = "left"
)

// Info is one member.
type Info struct {
	Name   string  `json:"name"`
	Addr   string  `json:"addr"` // gossip address
	RPC    string  `json:"rpc"`
	Status Status  `json:"status"`
	Load   float64 `json:"load"` // 15-minute load average, as last gossiped
}

// Config of a member.
type Config struct {
	Name string
	Bind string // HOST:PORT for gossip (TCP and UDP)
	RPC  string // advertised node RPC address
	Key  []byte // cluster key (16, 24 or 32 bytes); nil: gossip in clear
	Log  *slog.Logger
	// Timing of failure detection (DefaultTiming if zero).
	Timing Timing
	// OnChange is called (on its own goroutine) after every membership change.
	OnChange func()
	// OnMember is told each member's new status as Serf reports it.
	OnMember func(name string, st Status)
	// OnUserEvent is told of every Serf user event.
	OnUserEvent func(name string, payload []byte)
	// OnQuery answers a Serf query; ok=false sends no answer.
	OnQuery func(name string, payload []byte) (answer []byte, ok bool)
}

// Timing is how fast members find a failed one: about ProbeInterval x
// SuspicionMult x log(members) after its last answer (docs/BENCHMARKS.md
// has the measured figures).
type Timing struct {
	ProbeInterval  time.Duration // how often each member is probed
	ProbeTimeout   time.Duration // how long a probe waits for its ack
	SuspicionMult  int           // suspicion timeout in probe intervals (scaled by cluster size)
	GossipInterval time.Duration // how often news is gossiped
}

// DefaultTiming is tuned for a LAN cluster that fails over in about a
// second (memberlist's LAN defaults take about 5 s).
func DefaultTiming() Timing {
	return Timing{
		ProbeInterval:  200 * time.Millisecond, // memberlist's LAN: 1s
		ProbeTimeout:   100 * time.Millisecond, // memberlist's LAN: 500ms
		SuspicionMult:  2,                      // memberlist's LAN: 4
		GossipInterval: 200 * time.Millisecond, // memberlist's LAN
	}
}

// Member is this node's membership.
type Member struct {
	cfg  Config
	serf *serf.Serf
	stop chan struct{}
	wg   sync.WaitGroup
}

// ReadKey reads a cluster key file: the base64 of 16, 24 or 32 bytes.
func ReadKey(path string) ([]byte, error) {
	b, err := secret.Read("key file", path)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return nil, fmt.Errorf("key file %s: want the base64 of a 16, 24 or 32 byte key (cascadefs keygen makes one)", path)
	}
	return key, nil
}

// Start starts gossip on cfg.Bind.
func Start(cfg Config) (*Member, error) {
	host, portStr, err := net.SplitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("--bind %s: %w", cfg.Bind, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--bind %s: bad port", cfg.Bind)
	}
	events := make(chan serf.Event, 64)
	sc := serf.DefaultConfig()
	sc.NodeName = cfg.Name
	sc.Tags = map[string]string{"rpc": cfg.RPC, "load": loadTag()}
	sc.EventCh = events
	sc.LogOutput = logWriter(cfg.Log)
	sc.ReconnectTimeout = 10 * time.Minute // failed members are forgotten sooner than Serf's default day
	sc.TombstoneTimeout = 10 * time.Minute
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	mc.LogOutput = sc.LogOutput
	if cfg.Key != nil {
		mc.SecretKey = cfg.Key
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming()
	}
	t := cfg.Timing
	mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult, mc.GossipInterval = t.ProbeInterval, t.ProbeTimeout, t.SuspicionMult, t.GossipInterval
	sc.MemberlistConfig = mc
	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("gossip on %s: %w", cfg.Bind, err)
	}
	m := &Member{cfg: cfg, serf: s, stop: make(chan struct{})}
	m.wg.Add(2)
	go m.watch(events)
	go m.gossipLoad()
	return m, nil
}

// Join contacts the given members; it fails if none answers (or all of
// them refuse our key).
func (m *Member) Join(addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	n, err := m.serf.Join(addrs, true)
	if n == 0 {
		why := "no member answered"
		if err != nil {
			why = flatten(err)
		}
		return fmt.Errorf("join %s: %s", strings.Join(addrs, ","), why)
	}
	return nil
}

// flatten turns a multi-line multierror into one line.
func flatten(err error) string {
	var parts []string
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
		if line != "" && !strings.HasSuffix(line, "error occurred:") && !strings.HasSuffix(line, "errors occurred:") {
			parts = append(parts, strings.TrimSpace(line))
		}
	}
	return strings.Join(parts, "; ")
}

// Members lists every member known, with this node's view of its status.
func (m *Member) Members() []Info {
	suspect := map[string]bool{}
	for _, n := range m.serf.Memberlist().Members() {
		if n.State == memberlist.StateSuspect {
			suspect[n.Name] = true
		}
	}
	var out []Info
	for _, mb := range m.serf.Members() {
		st := Status(mb.Status.String())
		if st == Alive && suspect[mb.Name] {
			st = Suspect
		}
		load, _ := strconv.ParseFloat(mb.Tags["load"], 64)
		out = append(out, Info{Name: mb.Name, Addr: net.JoinHostPort(mb.Addr.String(), strconv.Itoa(int(mb.Port))),
			RPC: mb.Tags["rpc"], Status: st, Load: load})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Lookup returns the member called name.
func (m *Member) Lookup(name string) (Info, bool) {
	for _, i := range m.Members() {
		if i.Name == name {
			return i, true
		}
	}
	return Info{}, false
}

// ForceLeave turns a failed member into one that left (Serf's
// force-leave): the cluster stops waiting for it. An alive member refutes it.
func (m *Member) ForceLeave(name string) error { return m.serf.RemoveFailedNode(name) }

// Serf gives the underlying Serf (user events and queries).
func (m *Member) Serf() *serf.Serf { return m.serf }

// Leave tells the cluster this node goes, then stops gossip.
func (m *Member) Leave() {
	m.serf.Leave()
	m.Shutdown()
}

// Shutdown stops gossip without a goodbye (as a crash would).
func (m *Member) Shutdown() {
	select {
	case <-m.stop:
		return
	default:
	}
	close(m.stop)
	m.serf.Shutdown()
	m.wg.Wait()
}

func (m *Member) watch(events <-chan serf.Event) {
	defer m.wg.Done()
	for {
		select {
		case <-m.stop:
			return
		case e := <-events:
			if q, ok := e.(*serf.Query); ok {
				if m.cfg.OnQuery != nil {
					if answer, ok := m.cfg.OnQuery(q.Name, q.Payload); ok {
						q.Respond(answer)
					}
				}
				continue
			}
			if ue, ok := e.(serf.UserEvent); ok {
				if m.cfg.OnUserEvent != nil {
					m.cfg.OnUserEvent(ue.Name, ue.Payload)
				}
				continue
			}
			me, ok := e.(serf.MemberEvent)
			if !ok {
				continue
			}
			if m.cfg.OnMember != nil {
				st := map[serf.EventType]Status{serf.EventMemberJoin: Alive, serf.EventMemberFailed: Failed,
					serf.EventMemberLeave: Left, serf.EventMemberReap: Left}[me.Type]
				for _, mb := range me.Members {
					if st != "" {
						m.cfg.OnMember(mb.Name, st)
					}
				}
			}
			if m.cfg.OnChange != nil {
				m.cfg.OnChange()
			}
		}
	}
}

// gossipLoad refreshes the load tag now and then (the sync vote uses it).
func (m *Member) gossipLoad() {
	defer m.wg.Done()
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.serf.SetTags(map[string]string{"rpc": m.cfg.RPC, "load": loadTag()})
		}
	}
}

// loadTag is the 15-minute load average from /proc/loadavg.
func loadTag() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return f[2]
	}
	return "0"
}

// logWriter turns Serf's and memberlist's log lines into slog records:
// errors and warnings at Warn, the rest at Debug.
func logWriter(log *slog.Logger) io.Writer {
	r, w := io.Pipe()
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, "Shutdown without a Leave"):
				log.Debug("gossip", "msg", line) // a refused start or a crash test: said elsewhere
			case strings.Contains(line, "[ERR]"), strings.Contains(line, "[WARN]"):
				log.Warn("gossip", "msg", line)
			default:
				log.Debug("gossip", "msg", line)
			}
		}
	}()
	return w
}
