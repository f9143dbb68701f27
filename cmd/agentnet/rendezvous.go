package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/agentnet/agentnet/rendezvous"
)

// DefaultRendezvousPort is the UDP port a rendezvous listens on by default.
const DefaultRendezvousPort = 7420

func init() {
	register(&command{name: "rendezvous", summary: "run a rendezvous server (registry, trust mailbox)", run: runRendezvous})
}

func runRendezvous(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rendezvous", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", fmt.Sprintf(":%d", DefaultRendezvousPort), "UDP address to serve on")
	data := fs.String("data", defaultDataDir("rendezvous"), "state directory (identity, registry)")
	verbose := fs.Bool("v", false, "log debug messages")
	jsonOut := fs.Bool("json", false, "print one JSON object once serving: {addr, key, state} (errors too)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{Addr: *listen, DataDir: *data, Logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous:", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous:", err)
		return 1
	}
	printServing(stdout, *jsonOut, rendezvousServing{Addr: srv.Addr().String(), Key: srv.PublicKey().String(), State: *data})
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous: shutdown:", err)
		return 1
	}
	return 0
}

// defaultDataDir is the state directory of a role under the user's config
// directory (AGENTNET_HOME overrides the base).
func defaultDataDir(role string) string {
	if h := os.Getenv("AGENTNET_HOME"); h != "" {
		return filepath.Join(h, role)
	}
	base, err := os.UserConfigDir()
	if err != nil {
		base = "."
	}
	return filepath.Join(base, "agentnet", role)
}
