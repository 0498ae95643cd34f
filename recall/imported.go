package recall

import (
	"bytes"
	"context"
	"io"
	"os"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/stub"
)

// getData opens [off, off+length) of rec's data as stored: from archive
// copy i, or, for an imported object, from its origin bucket as it was
// when imported (its ETag).
func (m *Manager) getData(ctx context.Context, rec *stub.Record, i int, off, length int64) (io.ReadCloser, error) {
	if !rec.Imported {
		arch, _ := archive.CopyOf(m.arch, i)
		return arch.Get(ctx, rec.Key, off, length)
	}
	origin, err := archive.Origin(m.arch, rec.OriginBucket)
	if err != nil {
		return nil, err
	}
	return origin.GetMatch(ctx, rec.OriginKey, off, length, rec.ETag)
}

// checksumImported makes the chunk checksums of the imported file, whole
// in file now, into rec: inline, or in a checksum object of the file's own
// key (every copy) before the record names it.
func (m *Manager) checksumImported(file *os.File, rec *stub.Record) error {
	sums, err := stub.ComputeSumsOf(file, rec)
	if err != nil {
		return err
	}
	rec.Unverified = false
	if blob := rec.SetSums(sums); blob != nil {
		if _, err := m.arch.Put(m.ctx, archive.SumsKey(rec.Key), bytes.NewReader(blob), int64(len(blob))); err != nil {
			return err
		}
	}
	return nil
}
