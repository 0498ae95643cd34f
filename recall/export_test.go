package recall

// SetBeforeDrop runs fn between the look at a premigrated file and its
// drop, where a release can slip in.
func SetBeforeDrop(m *Manager, fn func()) { m.beforeDrop = fn }
func SetAfterLook(m *Manager, fn func())  { m.afterLook = fn }

// LiveStreams is how many streams of the file ino are running.
func LiveStreams(m *Manager, ino uint64) int {
	m.mu.Lock()
	f := m.files[ino]
	m.mu.Unlock()
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.streams)
}

// MaxParallel bounds the streams of one file.
const MaxParallel = maxParallel

// Contended reports whether a recall waits for a stream slot.
func Contended(m *Manager) bool { return m.streams.contended() }
