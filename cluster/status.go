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
}

// FSStatus is one filesystem: its repository record and its DM session.
type FSStatus struct {
	repo.FS
	Mountpoint string             `json:"mountpoint,omitempty"` // on the answering node
	Session    daemon.SessionInfo `json:"session"`
}

// Status collects the cluster's state.
func (n *Node) Status(ctx context.Context) Status {
	st := Status{Node: n.cfg.Name, Repo: n.cfg.RepoDir, Engine: repo.Engine(n.repo), Members: n.member.Members(), LeaseValid: n.leaseValid()}
	st.Leases, _ = n.repo.Leases()
	list, _ := n.repo.ListFS()
	for _, fs := range list {
		fst := FSStatus{FS: fs}
		if m := n.lookup(fs.Name); m != nil {
			fst.Mountpoint = filepath.Join(n.cfg.MountRoot, fs.Name)
			fst.Session = m.Session(ctx)
		} else {
			fst.Session = daemon.SessionInfo{Owner: fs.Owner, Epoch: fs.Epoch, State: "not mounted on " + n.cfg.Name}
		}
		st.FS = append(st.FS, fst)
	}
	sort.Slice(st.FS, func(i, j int) bool { return st.FS[i].Name < st.FS[j].Name })
	return st
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

// LocalNodes asks every node daemon on this host for its cluster status.
func LocalNodes(runDir string) []Status {
	socks, _ := filepath.Glob(filepath.Join(runDir, "node@*.sock"))
	var out []Status
	for _, s := range socks {
		resp, err := daemon.UnixClient(s, 10*time.Second).Get("http://node/cluster")
		if err != nil {
			continue
		}
		var st Status
		if json.NewDecoder(resp.Body).Decode(&st) == nil {
			st.sock = s
			out = append(out, st)
		}
		resp.Body.Close()
	}
	return out
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
	for _, st := range LocalNodes(runDir) {
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
