package recall

import (
	"sync"
	"sync/atomic"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// CopyStats count what the archive's copies did (status, metrics).
type CopyStats struct {
	Copies       int   `json:"copies"`
	Faults       int64 `json:"faults"`        // reads moved to the next copy
	Repaired     int64 `json:"repaired"`      // bad copies written again from a good one
	RepairFailed int64 `json:"repair_failed"` // repairs that could not be made
}

// copies is the Manager's state of the archive's copies.
type copies struct {
	faults, repaired, repairFailed atomic.Int64
	mu                             sync.Mutex
	bad                            map[string]map[int]bool // key -> copies found bad, not yet repaired
	jobs                           chan repairJob
}

type repairJob struct {
	rec  *stub.Record
	sums []uint32
	fd   int // a dup of the file's descriptor: is the object still its own?
	path string
	good int
	bad  []int
}

// maxQueuedRepairs bounds the repairs waiting; past it a bad copy is left
// (logged) for a later read to find again.
const maxQueuedRepairs = 256

// CopyStats returns the counts of copy faults and repairs.
func (m *Manager) CopyStats() CopyStats {
	_, n := archive.CopyOf(m.arch, 0)
	return CopyStats{Copies: n, Faults: m.copies.faults.Load(), Repaired: m.copies.repaired.Load(), RepairFailed: m.copies.repairFailed.Load()}
}

// nextCopy moves stream s to the next archive copy after its copy failed
// with err at off, and notes the failed one for repair; false when there
// is no next copy.
func (f *fileRecall) nextCopy(s *stream, off int64, err error) bool {
	_, n := archive.CopyOf(f.m.arch, 0)
	if s.copy+1 >= n || f.rec.Imported { // an imported object has one place
		return false
	}
	bad := s.copy
	s.copy++
	f.m.copies.faults.Add(1)
	if f.m.CopyCounted != nil {
		f.m.CopyCounted(1, 0)
	}
	f.m.log.Warn("archive copy failed; reading the next copy", "file", f.path, "key", f.rec.Key, "copy", bad+1, "next", s.copy+1, "offset", off, "reason", err)
	c := &f.m.copies
	c.mu.Lock()
	if c.bad == nil {
		c.bad = map[string]map[int]bool{}
	}
	if c.bad[f.rec.Key] == nil {
		c.bad[f.rec.Key] = map[int]bool{}
	}
	c.bad[f.rec.Key][bad] = true
	c.mu.Unlock()
	return true
}

// repairBehind queues the repair of the copies found bad for f's object,
// from copy good, which just served a whole stream.
func (m *Manager) repairBehind(f *fileRecall, good int) {
	f.mu.Lock()
	rec := f.rec
	f.mu.Unlock()
	if rec == nil {
		return
	}
	c := &m.copies
	c.mu.Lock()
	bad := c.bad[rec.Key]
	if len(bad) == 0 || bad[good] { // a stream that read a bad copy before it failed
		c.mu.Unlock()
		return
	}
	delete(c.bad, rec.Key)
	c.mu.Unlock()
	job := repairJob{rec: rec, path: f.path, good: good}
	for i := range bad {
		if i != good {
			job.bad = append(job.bad, i)
		}
	}
	sums, err := f.waitSums(m.ctx)
	if err != nil {
		return
	}
	job.sums = sums
	if job.fd, err = unix.Dup(f.fd); err != nil {
		return
	}
	m.startRepairs()
	select {
	case c.jobs <- job:
	default:
		unix.Close(job.fd)
		m.log.Error("archive copy repair not queued (too many waiting); a later read finds it again", "file", f.path, "key", rec.Key)
	}
}

// forgetBadCopies drops the copies noted bad for f's object when no copy
// served it: there is nothing to repair them from.
func (m *Manager) forgetBadCopies(f *fileRecall) {
	f.mu.Lock()
	rec := f.rec
	f.mu.Unlock()
	if rec == nil {
		return
	}
	m.copies.mu.Lock()
	delete(m.copies.bad, rec.Key)
	m.copies.mu.Unlock()
}

// startRepairs starts the repair worker once.
func (m *Manager) startRepairs() {
	m.repairOnce.Do(func() {
		m.copies.jobs = make(chan repairJob, maxQueuedRepairs)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				select {
				case job := <-m.copies.jobs:
					m.repair(job)
				case <-m.ctx.Done():
					for {
						select {
						case job := <-m.copies.jobs:
							unix.Close(job.fd)
						default:
							return
						}
					}
				}
			}
		}()
	})
}

// repair writes the object, its checksums and its description again into
// each bad copy, from the good copy, every chunk checked on the way.
func (m *Manager) repair(job repairJob) {
	defer unix.Close(job.fd)
	good, _ := archive.CopyOf(m.arch, job.good)
	for _, i := range job.bad {
		dst, _ := archive.CopyOf(m.arch, i)
		// Checked, not held: the write is of verified bytes, and long.
		err := m.Fence.Run(func() error { return nil })
		if err == nil {
			err = archive.Repair(m.ctx, good, dst, job.rec, job.sums)
		}
		if err != nil {
			m.copies.repairFailed.Add(1)
			m.log.Error("archive copy not repaired", "file", job.path, "key", job.rec.Key, "copy", i+1, "reason", err)
			continue
		}
		// Deleted meanwhile (its DESTROY ran before this write): the
		// object written again would be left behind.
		rec, err := stub.ReadRecord(job.fd)
		var st unix.Stat_t
		if err != nil || rec == nil || rec.Key != job.rec.Key || unix.Fstat(job.fd, &st) != nil || st.Nlink == 0 {
			for _, k := range append([]string{job.rec.Key}, archive.Companions(job.rec.Key)...) {
				dst.Delete(m.ctx, k)
			}
			continue
		}
		m.copies.repaired.Add(1)
		if m.CopyCounted != nil {
			m.CopyCounted(0, 1)
		}
		m.log.Info("archive copy repaired", "file", job.path, "key", job.rec.Key, "copy", i+1, "from", job.good+1)
	}
}
