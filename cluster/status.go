package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/repo"
)

// Status is the cluster as one node sees it (`cascadefs status`).
type Status struct {
	sock    string        // the control socket that answered
	Node    string        `json:"node"`
	Repo    string        `json:"repo"`
	Engine  string        `json:"engine"` // the repository engine
	Members []member.Info `json:"members"`
	// Leases as this node judges them; LeaseValid: its own, by its clock.
	Leases     []repo.NodeLease `json:"leases"`
	LeaseValid bool             `json:"lease_valid"`
	FS         []FSStatus       `json:"filesystems"`
	// RepoError: the repository did not answer in time (the filesystems
	// shown are this node's last look at them).
	RepoError string `json:"repo_error,omitempty"`
}

// statusBudget is how long a node takes at most to answer a status: the
// CLI waits StatusWait for every daemon of the host at once.
const statusBudget = daemon.StatusBudget

// StatusWait is how long `cascadefs status` waits for each daemon.
const StatusWait = statusBudget + 500*time.Millisecond

// FSStatus is one filesystem: its repository record and its DM session.
type FSStatus struct {
	repo.FS
	Mountpoint string             `json:"mountpoint,omitempty"` // on the answering node
	Session    daemon.SessionInfo `json:"session"`
	// SettingsError: the stored settings do not parse on the answering
	// node, which keeps using the last good ones.
	SettingsError string `json:"settings_error,omitempty"`
}

// Status collects the cluster's state.
//
// It answers within statusBudget whatever the repository or a peer does:
// what did not answer in time is marked so.
func (n *Node) Status(ctx context.Context) Status {
	ctx, cancel := context.WithTimeout(ctx, statusBudget)
	defer cancel()
	st := Status{Node: n.cfg.Name, Repo: n.cfg.RepoDir, Engine: repo.Engine(n.repo), Members: n.member.Members(), LeaseValid: n.leaseValid()}
	type look struct {
		leases []repo.NodeLease
		list   []repo.FS
	}
	got, err := daemon.Within(statusBudget/2, func() (look, error) {
		var l look
		var err error
		if l.leases, err = n.repo.Leases(ctx); err != nil {
			return l, err
		}
		l.list, err = n.repo.ListFS(ctx)
		return l, err
	})
	st.Leases = got.leases
	list := got.list
	if err != nil {
		st.RepoError = "repository: " + err.Error()
		n.mu.Lock()
		for _, m := range n.fss {
			list = append(list, m.config())
		}
		n.mu.Unlock()
	}
	st.FS = make([]FSStatus, len(list))
	var wg sync.WaitGroup
	for i, fs := range list {
		st.FS[i] = FSStatus{FS: fs}
		m := n.lookup(fs.Name)
		if m == nil {
			st.FS[i].Session = daemon.SessionInfo{Owner: fs.Owner, Epoch: fs.Epoch, State: "not mounted on " + n.cfg.Name}
			continue
		}
		st.FS[i].Mountpoint = filepath.Join(n.cfg.MountRoot, fs.Name)
		st.FS[i].SettingsError = m.settingsError()
		wg.Add(1)
		go func() {
			defer wg.Done()
			info, err := daemon.Within(statusBudget*3/4, func() (daemon.SessionInfo, error) { return m.Session(ctx), nil })
			if err != nil {
				info = daemon.SessionInfo{Owner: fs.Owner, Epoch: fs.Epoch, State: "session did not answer: " + err.Error()}
			}
			st.FS[i].Session = info
		}()
	}
	wg.Wait()
	sort.Slice(st.FS, func(i, j int) bool { return st.FS[i].Name < st.FS[j].Name })
	return st
}

// Healthy says what is wrong with the cluster as st shows it (nil: all
// is well): every member alive, this node's lease valid, the repository
// answering, and every filesystem served by an active session.
func (st *Status) Healthy() []string {
	var bad []string
	if st.RepoError != "" {
		bad = append(bad, st.RepoError)
	}
	if st.Node != "" && !st.LeaseValid {
		bad = append(bad, "the lease of "+st.Node+" is not valid")
	}
	for _, m := range st.Members {
		if m.Status != member.Alive {
			bad = append(bad, "node "+m.Name+" is "+string(m.Status))
		}
	}
	for _, f := range st.FS {
		if f.Session.State != "active" {
			bad = append(bad, "filesystem "+f.Name+": "+f.Session.State)
		}
		if f.SettingsError != "" {
			bad = append(bad, "filesystem "+f.Name+": stored settings do not parse (the last good ones are in use): "+f.SettingsError)
		}
	}
	return bad
}

// NodeSocket is the control socket of node name.
func NodeSocket(runDir, name string) string { return daemon.SocketPath(runDir, "node@"+name) }

// startNodeControl serves the node's root-only control socket.
func startNodeControl(n *Node) (*daemon.ControlServer, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(n.Status(r.Context()))
	})
	mux.HandleFunc("POST /failover", func(w http.ResponseWriter, r *http.Request) {
		var req moveReq
		json.NewDecoder(r.Body).Decode(&req)
		reply, err := n.Move(r.Context(), req.FS, req.To)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		json.NewEncoder(w).Encode(reply)
	})
	mux.HandleFunc("POST /expel", func(w http.ResponseWriter, r *http.Request) {
		var req expelReq
		json.NewDecoder(r.Body).Decode(&req)
		if err := n.Expel(req.Node); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		json.NewEncoder(w).Encode(struct{}{})
	})
	return daemon.ServeControl(NodeSocket(n.cfg.RunDir, n.cfg.Name), mux)
}

type expelReq struct {
	Node string `json:"node"`
}

// LocalNodes asks every node daemon on this host for its cluster status,
// all at once, each for at most StatusWait; silent names the sockets of
// those that did not answer (a stopped or wedged node).
func LocalNodes(runDir string) (out []Status, silent []string) {
	socks, _ := filepath.Glob(filepath.Join(runDir, "node@*.sock"))
	answers := make([]*Status, len(socks))
	var wg sync.WaitGroup
	for i, s := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := daemon.UnixClient(s, StatusWait).Get("http://node/cluster")
			if err != nil {
				return
			}
			defer resp.Body.Close()
			var st Status
			if json.NewDecoder(resp.Body).Decode(&st) == nil {
				st.sock = s
				answers[i] = &st
			}
		}()
	}
	wg.Wait()
	for i, a := range answers {
		if a != nil {
			out = append(out, *a)
		} else {
			silent = append(silent, socks[i])
		}
	}
	return out, silent
}

// RequestMove asks a node of this host (of the cluster whose repository is
// repoDir, if given) to move filesystem fs to node to.
func RequestMove(runDir, repoDir, fs, to string) (owner string, epoch uint64, err error) {
	var reply moveReply
	err = askLocalNode(runDir, repoDir, "/failover", moveReq{FS: fs, To: to}, &reply)
	return reply.Owner, reply.Epoch, err
}

// RequestExpel asks a node of this host to expel a failed node.
func RequestExpel(runDir, repoDir, node string) error {
	return askLocalNode(runDir, repoDir, "/expel", expelReq{Node: node}, &struct{}{})
}

// askLocalNode posts req to a node daemon of this host (of the cluster
// whose repository is repoDir, if given) and decodes its reply.
func askLocalNode(runDir, repoDir, path string, req, reply any) error {
	nodes, _ := LocalNodes(runDir)
	for _, st := range nodes {
		if repoDir != "" && !SameDir(st.Repo, repoDir) {
			continue
		}
		body, _ := json.Marshal(req)
		resp, err := daemon.UnixClient(st.sock, 2*time.Minute).Post("http://node"+path, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			return errors.New(strings.TrimSpace(string(msg)))
		}
		return json.NewDecoder(resp.Body).Decode(reply)
	}
	return errors.New("no node of that cluster runs on this host")
}

// SameDir reports whether two repository specs name the same repository
// (the same directory, or the same etcd endpoints).
func SameDir(a, b string) bool {
	if repo.IsEtcd(a) || repo.IsEtcd(b) {
		return a == b
	}
	x, err1 := filepath.Abs(a)
	y, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && filepath.Clean(x) == filepath.Clean(y)
}
