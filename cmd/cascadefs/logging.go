package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
)

// logFlags are a daemon command's --log-format and --log-level.
type logFlags struct{ format, level *string }

// addLogFlags adds --log-format and --log-level to a daemon command.
func addLogFlags(fl *flag.FlagSet) logFlags {
	return logFlags{
		format: fl.String("log-format", "text", "log lines on stderr: text (key=value) or json (one object per line, for log collectors)"),
		level:  fl.String("log-level", "info", "least level logged: debug (every recall stream and split, and more), info, warn or error"),
	}
}

// newLogger makes the daemon's logger and makes it the default, so that
// lines from libraries writing through the standard log package (go-fuse
// with --debug) come out in the same format.
func newLogger(flags logFlags) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(*flags.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", *flags.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format := *flags.format; format {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	log := slog.New(h)
	slog.SetDefault(log)
	return log, nil
}

// adminLog is where what an admin command's engines do on their own (a
// stopped repository lock holder killed) is said: the admin's terminal.
var adminLog = slog.New(slog.NewTextHandler(os.Stderr, nil))
