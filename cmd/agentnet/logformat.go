package main

import (
	"fmt"
	"io"
	"log/slog"
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
