package cluster

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/cascadefs/cascadefs/cluster/owner"
	"github.com/cascadefs/cascadefs/repo"
	"github.com/hashicorp/serf/serf"
)

// The synchronous failover protocol (failover=sync on a filesystem): the
// eligible nodes broadcast a priority key with a Serf query; when the vote
// times out, the node with the best key takes over, under the same lock
// and checks as the asynchronous race. A node that does not hear the vote,
// or whose winner never takes, falls back to the race.

const queryVote = "cascadefs-vote"

// voteTimeout is how long a vote collects keys.
const voteTimeout = 500 * time.Millisecond

// priorityKey: the lower the 15-minute load average, the higher the key;
// the node's --weight biases it.
func (n *Node) priorityKey() float64 {
	var load float64
	if i, ok := n.member.Lookup(n.cfg.Name); ok {
		load = i.Load
	}
	return n.cfg.Weight - load
}

// vote runs the vote for fs and reports whether this node won it.
func (n *Node) vote(fs repo.FS, failed string) (bool, error) {
	mine := owner.Ballot{FS: fs.Name, Failed: failed, Node: n.cfg.Name, Key: n.priorityKey()}
	payload, _ := json.Marshal(mine)
	resp, err := n.member.Serf().Query(queryVote, payload, &serf.QueryParam{Timeout: voteTimeout})
	if err != nil {
		return false, err
	}
	best := mine
	for r := range resp.ResponseCh() { // closed when the vote times out
		var b owner.Ballot
		if json.Unmarshal(r.Payload, &b) == nil && b.FS == fs.Name && owner.Better(b, best) {
			best = b
		}
	}
	n.log.Info("failover vote", "fs", fs.Name, "from", failed, "winner", best.Node, "key", fmt.Sprintf("%.2f", best.Key),
		"our_key", fmt.Sprintf("%.2f", mine.Key))
	return best.Node == n.cfg.Name, nil
}

// onQuery answers a vote with this node's key if it could serve the
// filesystem too.
func (n *Node) onQuery(name string, payload []byte) ([]byte, bool) {
	if name != queryVote {
		return nil, false
	}
	var b owner.Ballot
	if json.Unmarshal(payload, &b) != nil || b.Node == n.cfg.Name {
		return nil, false
	}
	fs, err := n.repo.GetFS(n.ctx, b.FS)
	if err != nil || n.ineligible(fs) != "" {
		return nil, false
	}
	mine, _ := json.Marshal(owner.Ballot{FS: b.FS, Failed: b.Failed, Node: n.cfg.Name, Key: n.priorityKey()})
	return mine, true
}

// takeOverSync takes fs by the synchronous protocol.
func (n *Node) takeOverSync(fs repo.FS, failed, reason string) {
	won, err := n.vote(fs, failed)
	if err != nil {
		n.log.Warn("failover vote failed; racing instead", "fs", fs.Name, "reason", err)
		won = true
	}
	if !won {
		// Give the winner time to take it; then race, in case it did not.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && n.ctx.Err() == nil {
			cur, err := n.repo.GetFS(n.ctx, fs.Name)
			if err == nil && cur.Owner != failed {
				n.log.Info("failover: the vote winner took it", "fs", fs.Name, "owner", cur.Owner)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	n.takeOver(fs.Name, failed, reason+" (vote)")
}
