package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cascadefs/cascadefs/internal/failpoint"
	"github.com/cascadefs/cascadefs/stub"
)

// ErrIntegrity: archive data that does not match its checksum.
var ErrIntegrity = errors.New("archive data does not match its checksum")

// CheckedCopy copies the packed object body of rec to w, chunk by chunk,
// each checked against its checksum first: a wrong byte is never written.
// A sealed object is copied sealed (its checksums are of sealed chunks:
// no key is needed).
// It reads exactly the object's recorded size.
func CheckedCopy(w io.Writer, body io.Reader, rec *stub.Record, sums []uint32) error {
	buf := make([]byte, rec.StoredLen(rec.ChunkSize))
	for _, run := range rec.DataRuns() {
		for off := run[0]; off < run[1]; off += rec.ChunkSize {
			b := buf[:rec.StoredLen(min(rec.ChunkSize, run[1]-off))]
			if _, err := io.ReadFull(body, b); err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
					return fmt.Errorf("%s: shorter than recorded (at %d): %w", rec.Key, off, ErrIntegrity)
				}
				return err
			}
			if i := off / rec.ChunkSize; i >= int64(len(sums)) || stub.ChunkCRC(b) != sums[i] {
				return fmt.Errorf("%s chunk at %d: %w", rec.Key, off, ErrIntegrity)
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
	}
	return nil
}

// Repair writes the object of rec, its checksum object and its
// description into dst again, from good, every chunk checked on the way.
func Repair(ctx context.Context, good, dst Archive, rec *stub.Record, sums []uint32) error {
	body, err := good.Get(ctx, rec.Key, 0, -1)
	if err != nil {
		return err
	}
	defer body.Close()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(CheckedCopy(pw, body, rec, sums)) }()
	_, err = dst.Put(ctx, rec.Key, pr, rec.PackedSize())
	pr.CloseWithError(err)
	if err == nil {
		err = failpoint.Hit(failpoint.RepairAfterData)
	}
	if err != nil {
		return err
	}
	if !rec.InlineSums() {
		blob := stub.EncodeSums(sums)
		if _, err := dst.Put(ctx, SumsKey(rec.Key), bytes.NewReader(blob), int64(len(blob))); err != nil {
			return err
		}
	}
	if meta, err := good.Get(ctx, MetaKey(rec.Key), 0, -1); err == nil {
		blob, err := io.ReadAll(io.LimitReader(meta, 1<<20))
		meta.Close()
		if err == nil {
			if _, err := dst.Put(ctx, MetaKey(rec.Key), bytes.NewReader(blob), int64(len(blob))); err != nil {
				return err
			}
		}
	}
	return nil
}
