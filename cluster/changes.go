package cluster

import (
	"sync"
	"time"

	"github.com/cascadefs/cascadefs/fusefs"
)

// changeQueue sends the attribute and name changes made through this node
// to the other nodes, in batches, without making the call that made them
// wait for a round trip per change: the others drop their cached copies
// within a few milliseconds (linger and one round trip), instead of after
// their kernels' one-second timeouts. Written data is sent at close instead,
// synchronously (close-to-open).
type changeQueue struct {
	n    *Node
	fs   string
	ch   chan fusefs.Change
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

// maxBatch bounds the changes of one call to each node; linger is how long
// a batch waits for more after its first change.
const (
	maxBatch = 512
	linger   = 2 * time.Millisecond
)

func newChangeQueue(n *Node, fs string) *changeQueue {
	q := &changeQueue{n: n, fs: fs, ch: make(chan fusefs.Change, 4*maxBatch), quit: make(chan struct{}), done: make(chan struct{})}
	go q.run()
	return q
}

// add queues a change; it waits only when the queue is full.
func (q *changeQueue) add(c fusefs.Change) {
	select {
	case q.ch <- c:
	case <-q.quit:
	}
}

func (q *changeQueue) stop() {
	q.once.Do(func() { close(q.quit) })
	<-q.done
}

func (q *changeQueue) run() {
	defer close(q.done)
	for {
		var batch []fusefs.Change
		select {
		case c := <-q.ch:
			batch = append(batch, c)
		case <-q.quit:
			return
		}
		// Take what comes within linger: under a burst (rm -r, chmod -R)
		// one call carries many changes.
		t := time.NewTimer(linger)
	more:
		for len(batch) < maxBatch {
			select {
			case c := <-q.ch:
				batch = append(batch, c)
			case <-t.C:
				break more
			case <-q.quit:
				break more
			}
		}
		t.Stop()
		q.n.sendChanges(q.fs, invalidateReq{FS: q.fs, Changes: batch})
	}
}
