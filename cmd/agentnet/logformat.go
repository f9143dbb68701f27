package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// newLogger returns a logger writing to w in format "text" (slog's
// key=value lines, the default for "") or "json" (one JSON object per
// line, for log collectors).
func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// warnLog is a writer for startupCheck's warnings that logs each as a
// warning record, so that with --log-format json every line of the log
// (stderr, or a detached daemon's daemon.log) is a JSON object.
type warnLog struct{ l *slog.Logger }

func (w warnLog) Write(p []byte) (int, error) {
	w.l.Warn(strings.TrimPrefix(strings.TrimSpace(string(p)), "agentnet up: warning: "))
	return len(p), nil
}
