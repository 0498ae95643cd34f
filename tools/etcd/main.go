// Command etcd is the etcd server (go.etcd.io/etcd/server/v3, pinned in
// go.mod), built into .tools/ for the tests of the etcd repository engine,
// as MinIO is. A module of its own: the server's dependencies stay out of
// cascadefs.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
