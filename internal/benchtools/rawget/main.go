// Command rawget times one plain minio-go GET of a whole object: the
// baseline that scripts/recall-cpu.sh puts beside a recall through the mount.
//
//	rawget ENDPOINT BUCKET KEY   (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// discard hides io.Discard's ReadFrom (8 KiB reads): reads are 1 MiB, as dd bs=1M.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: rawget ENDPOINT BUCKET KEY")
		os.Exit(2)
	}
	c, err := minio.New(os.Args[1], &minio.Options{Creds: credentials.NewEnvAWS()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawget:", err)
		os.Exit(1)
	}
	start := time.Now()
	obj, err := c.GetObject(context.Background(), os.Args[2], os.Args[3], minio.GetObjectOptions{})
	if err == nil {
		var n int64
		n, err = io.CopyBuffer(discard{}, obj, make([]byte, 1<<20))
		fmt.Printf("raw GET: %d bytes, %.0f MB/s\n", n, float64(n)/time.Since(start).Seconds()/1e6)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawget:", err)
		os.Exit(1)
	}
}
