package owner

// Watchdog decides, for each filesystem this node serves, what to do
// about a DM session that is stuck (events wait and none finishes for the
// stuck-after time, or a space monitor cycle finishes no file) and about
// a FUSE server that died: the first time, restart it; if it happens
// again before it recovered, give the filesystem up (the others take it
// at once). It is used by one goroutine (the node's watchdog loop).
type Watchdog struct {
	restarted map[string]bool // DM sessions restarted once
	remounted map[string]bool // FUSE servers remounted once
}

// Verdict is what the watchdog does about one filesystem.
type Verdict int

const (
	Fine     Verdict = iota // nothing to do
	Restart                 // stop the session; the next reconcile starts it again
	Remount                 // remount the dead FUSE server; the session follows
	GiveItUp                // give the filesystem up with an active failover request
)

// Session judges an owned filesystem's session.
func (w *Watchdog) Session(fs string, stuck bool) Verdict {
	if w.restarted == nil {
		w.restarted = map[string]bool{}
	}
	switch {
	case !stuck:
		delete(w.restarted, fs)
		return Fine
	case !w.restarted[fs]:
		w.restarted[fs] = true
		return Restart
	}
	delete(w.restarted, fs)
	return GiveItUp
}

// Mount judges a mounted filesystem: unhealthy is why it cannot be served
// ("" if it can), fuseDied whether that is its FUSE server, owned whether
// this node serves its session.
func (w *Watchdog) Mount(fs, unhealthy string, fuseDied, owned bool) Verdict {
	if w.remounted == nil {
		w.remounted = map[string]bool{}
	}
	switch {
	case unhealthy == "":
		return Fine
	case fuseDied && !w.remounted[fs]:
		w.remounted[fs] = true
		return Remount
	case owned:
		return GiveItUp
	}
	return Fine
}

// Ballot is a node's bid in a synchronous failover vote.
type Ballot struct {
	FS     string  `json:"fs"`
	Failed string  `json:"failed"`
	Node   string  `json:"node"`
	Key    float64 `json:"key"`
}

// Better orders ballots: the higher priority key first, then the smaller
// name, so that every node picks the same winner from the same ballots.
func Better(a, b Ballot) bool {
	if a.Key != b.Key {
		return a.Key > b.Key
	}
	return a.Node < b.Node
}
