// Command cascadefs is the HSM filesystem daemon and its admin commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

const usage = `cascadefs: hierarchical storage management over FUSE

Usage:
  cascadefs mount --backing DIR --archive URL [--name FS] [--quota SIZE --high PCT --low PCT ...] [--metrics HOST:PORT] MOUNTPOINT
  cascadefs node --name N --bind HOST:PORT --rpc HOST:PORT [--join HOST:PORT,...] --repo DIR
                 --mount-root DIR [--key-file F] [--credentials-file F]   (or --config F)
  cascadefs keygen [--archive-key]            (a cluster key, or a key that seals the archive)
  cascadefs failover NAME --to NODE [--repo DIR]
  cascadefs expel NODE [--repo DIR]          (a failed node known to be down)
  cascadefs migrate [-r] [--premigrate] [-j N] [--dry-run [--json]] PATH...
  cascadefs recall [-r] [-j N] PATH...
  cascadefs recall --cancel [--all] [PATH...]
  cascadefs ls [-r] [--json] PATH...
  cascadefs status [--json]
  cascadefs df [--json] [PATH...]
  cascadefs reconcile [--dry-run] [--json] [--grace DURATION] PATH
  cascadefs undelete --list [--json] PATH...   (deleted and replaced files kept for the retention)
  cascadefs undelete [--at TIME] [--to NEWPATH] PATH...
  cascadefs scrub [--repair] [--rate SIZE] [--after PATH] [--json] PATH...   (read the archive copies back)
  cascadefs import [--dry-run] [--json] s3://BUCKET[/PREFIX] PATH   (stubs for objects cascadefs did not write)
  cascadefs rebuild --archive URL --name FS [--at TIME] [--include-deleted] [--dry-run] [--json] [--encryption-key-file F] DIR
                 (a lost backing directory's stubs, made again from the archive alone)
  cascadefs fs add --repo DIR NAME --backing DIR --archive URL [--candidates n1,n2,...] [--owner N]
  cascadefs fs list --repo DIR [--json]
  cascadefs fs set --repo DIR NAME KEY=VALUE...
  cascadefs fs remove --repo DIR NAME

Archive URLs: s3://BUCKET[/PREFIX]?endpoint=HOST:PORT[&insecure=true][&region=R]
              file:///DIR
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"mount": cmdMount, "node": cmdNode, "keygen": cmdKeygen, "failover": cmdFailover, "expel": cmdExpel, "fs": cmdFS, "migrate": cmdMigrate, "recall": cmdRecall, "ls": cmdLs, "status": cmdStatus, "df": cmdDF, "reconcile": cmdReconcile, "undelete": cmdUndelete, "rebuild": cmdRebuild, "scrub": cmdScrub, "import": cmdImport,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		if a := os.Args[1]; a == "-h" || a == "--help" || a == "help" {
			fmt.Print(usage)
			return
		}
		fmt.Fprintf(os.Stderr, "cascadefs: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err := cmd(os.Args[2:]); err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintf(os.Stderr, "cascadefs %s: %v\n", os.Args[1], oneLine(err))
		}
		os.Exit(1)
	}
}

// errReported: the command already printed what went wrong.
var errReported = errors.New("reported")

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func newFlags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: cascadefs %s %s\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}
