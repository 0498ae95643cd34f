package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
)

// logFormatFlag adds --log-format to a daemon command.
func logFormatFlag(fl *flag.FlagSet) *string {
	return fl.String("log-format", "text", "log lines on stderr: text (key=value) or json (one object per line, for log collectors)")
}

// newLogger makes the daemon's logger and makes it the default, so that
// lines from libraries writing through the standard log package (go-fuse
// with --debug) come out in the same format.
func newLogger(format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler
	switch format {
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
