package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cascadefs/cascadefs/cluster"
	"github.com/cascadefs/cascadefs/cluster/member"
	"github.com/cascadefs/cascadefs/daemon"
	"github.com/cascadefs/cascadefs/internal/secret"
	"github.com/cascadefs/cascadefs/seal"
)

const nodeArgs = "--name N --bind HOST:PORT --rpc HOST:PORT [--join HOST:PORT,...] --repo DIR --mount-root DIR --key-file F [--credentials-file F] | --config F"

// cmdNode runs a node daemon until SIGINT or SIGTERM.
func cmdNode(args []string) error {
	fl := newFlags("node", nodeArgs)
	var cfg cluster.Config
	fl.StringVar(&cfg.Name, "name", "", "node name, unique in the cluster")
	fl.StringVar(&cfg.Bind, "bind", "", "gossip address (Serf), HOST:PORT")
	fl.StringVar(&cfg.RPC, "rpc", "", "node RPC address, HOST:PORT")
	join := fl.String("join", "", "members to join, HOST:PORT,...")
	fl.StringVar(&cfg.RepoDir, "repo", "", "repository: a directory on shared storage (bbolt, nodes on one host) or etcd://HOST:PORT[,HOST:PORT...]")
	fl.StringVar(&cfg.MountRoot, "mount-root", "", "filesystems are mounted at MOUNT-ROOT/NAME")
	keyFile := fl.String("key-file", "", "cluster key (base64; cascadefs keygen makes one)")
	credsFile := fl.String("credentials-file", "", "KEY=VALUE lines put into the environment (archive credentials)")
	configFile := fl.String("config", "", "file with these settings, one KEY = VALUE per line")
	fl.BoolVar(&cfg.NoPassthrough, "no-passthrough", false, "never use kernel FUSE passthrough")
	fl.BoolVar(&cfg.AllowUserBacking, "allow-user-backing", false, allowUserBackingHelp)
	fl.StringVar(&cfg.Metrics, "metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics")
	logging := addLogFlags(fl)
	fl.IntVar(&cfg.MaxFilesystems, "max-filesystems", 0, "take at most this many DM sessions (0: no bound)")
	fl.Float64Var(&cfg.Weight, "weight", 0, "bias of this node's key in synchronous failover votes (higher wins)")
	fl.DurationVar(&cfg.Lease, "lease", cluster.DefaultLease, "lease TTL: nobody takes this node's filesystems while it renews; it stops acting when it cannot")
	fl.DurationVar(&cfg.StuckAfter, "stuck-after", cluster.DefaultStuckAfter, "DM workers that finish nothing this long are restarted once, then the filesystem is given up")
	cfg.Gossip = member.DefaultTiming()
	fl.DurationVar(&cfg.Gossip.ProbeInterval, "probe-interval", cfg.Gossip.ProbeInterval, "failure detection: how often each member is probed")
	fl.DurationVar(&cfg.Gossip.ProbeTimeout, "probe-timeout", cfg.Gossip.ProbeTimeout, "failure detection: how long a probe waits for its ack")
	fl.IntVar(&cfg.Gossip.SuspicionMult, "suspicion-mult", cfg.Gossip.SuspicionMult, "failure detection: suspicion timeout in probe intervals (scaled by cluster size)")
	if err := fl.Parse(args); err != nil {
		return errReported
	}
	if *configFile != "" {
		fileArgs, err := readConfig(*configFile)
		if err != nil {
			return err
		}
		// The file first, then the command line again, so flags win.
		if err := fl.Parse(append(fileArgs, args...)); err != nil {
			return errReported
		}
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fl.Arg(0))
	}
	if cfg.Name == "" || cfg.Bind == "" || cfg.RPC == "" || cfg.RepoDir == "" || cfg.MountRoot == "" {
		return errors.New("need --name, --bind, --rpc, --repo and --mount-root (or --config)")
	}
	cfg.Join = splitList(*join)
	// No key, no node: without one anybody who reaches the RPC port could
	// punch files and delete archive objects.
	if *keyFile == "" {
		return errors.New("need --key-file: the cluster key protects gossip and the node RPC (cascadefs keygen > FILE; chmod 600 FILE)")
	}
	key, err := member.ReadKey(*keyFile)
	if err != nil {
		return err
	}
	cfg.Key = key
	if *credsFile != "" {
		if err := loadEnvFile(*credsFile); err != nil {
			return err
		}
	}
	log, err := newLogger(logging)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	n, err := cluster.Start(cfg, log)
	if err != nil {
		return err
	}
	s := <-sigs
	log.Info("signal received; stopping", "node", cfg.Name, "signal", s.String())
	n.Stop()
	return nil
}

// readConfig turns "key = value" lines into flags; # starts a comment.
func readConfig(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	var args []string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return nil, fmt.Errorf("config %s:%d: want KEY = VALUE", path, line)
		}
		args = append(args, "--"+strings.TrimSpace(k)+"="+strings.TrimSpace(v))
	}
	return args, sc.Err()
}

// loadEnvFile sets KEY=VALUE lines as environment variables (archive
// credentials), so they stay out of configs, the repository and logs.
func loadEnvFile(path string) error {
	b, err := secret.Read("credentials file", path)
	if err != nil {
		return err
	}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("credentials file %s:%d: want KEY=VALUE", path, i+1)
		}
		os.Setenv(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return nil
}

// cmdKeygen prints a new cluster key, or archive key.
func cmdKeygen(args []string) error {
	if len(args) == 1 && args[0] == "--archive-key" {
		fmt.Println(seal.NewKey())
		return nil
	}
	if len(args) > 0 {
		return errors.New("keygen takes no argument but --archive-key")
	}
	key := make([]byte, 32)
	rand.Read(key)
	fmt.Println(base64.StdEncoding.EncodeToString(key))
	return nil
}

// cmdFailover moves a filesystem to another node by hand, through a node
// daemon of this host (the same takeover path as a failure).
func cmdExpel(args []string) error {
	fl := newFlags("expel", "NODE [--repo DIR]")
	repoDir := fl.String("repo", "", "the cluster whose repository is DIR or etcd://HOST:PORT,... (default: any node on this host)")
	fl.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: cascadefs expel NODE [--repo DIR]\n"+
			"Takes a failed node out of the cluster, so that releases (migrations) stop waiting for it.\n"+
			"Only for a node known to be down (powered off, or its cascadefs processes killed): a node\n"+
			"that still serves reads by kernel passthrough could read released data as zeros.\n")
		fl.PrintDefaults()
	}
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("need NODE")
	}
	if err := cluster.RequestExpel(daemon.RunDir(), *repoDir, pos[0]); err != nil {
		return err
	}
	fmt.Printf("%s is out of the cluster; it rejoins when it starts again\n", pos[0])
	return nil
}

func cmdFailover(args []string) error {
	fl := newFlags("failover", "NAME --to NODE [--repo DIR]")
	to := fl.String("to", "", "the node that takes the filesystem")
	repoDir := fl.String("repo", "", "the cluster whose repository is DIR or etcd://HOST:PORT,... (default: any node on this host)")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *to == "" {
		return errors.New("need NAME --to NODE")
	}
	owner, epoch, err := cluster.RequestMove(daemon.RunDir(), *repoDir, pos[0], *to)
	if err != nil {
		return err
	}
	fmt.Printf("%s is served by %s (epoch %d)\n", pos[0], owner, epoch)
	return nil
}
