package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/relay"
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
	listenTCP := fs.String("listen-tcp", "", "TCP address of the TLS/WebSocket listener for agents whose network lets no UDP out (production: :443; empty: off)")
	tlsCert := fs.String("tls-cert", "", "PEM certificate the TCP listener presents (default: the server key's self-signed one, which agents pin)")
	tlsKey := fs.String("tls-key", "", "PEM key of -tls-cert")
	relayRate := fs.Int("relay-rate", 0, fmt.Sprintf("relay budget per session, bytes/s, both directions (default %d)", relay.DefaultRate))
	initStore := fs.Bool("init-store", false, "start with an empty store although the server identity exists (a deliberate fresh start)")
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
	cfg := rendezvous.ServerConfig{Addr: *listen, DataDir: *data, InitStore: *initStore, Logger: log,
		TCP: rendezvous.TCPConfig{Addr: *listenTCP}, Limits: rendezvous.Limits{RelayRate: *relayRate}}
	if (*tlsCert == "") != (*tlsKey == "") {
		fmt.Fprintln(stderr, "agentnet rendezvous: -tls-cert and -tls-key go together")
		return 2
	}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			fmt.Fprintln(stderr, "agentnet rendezvous: TLS certificate:", err)
			return 1
		}
		cfg.TCP.Certificate = &cert
	}
	if *relayRate < 0 {
		fmt.Fprintln(stderr, "agentnet rendezvous: -relay-rate must not be negative")
		return 2
	}
	srv, err := rendezvous.NewServer(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous:", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous:", err)
		return 1
	}
	var tcpAddr string
	if a := srv.TCPAddr(); a != nil {
		tcpAddr = a.String()
	}
	printServing(stdout, *jsonOut, rendezvousServing{Addr: srv.Addr().String(), Key: srv.PublicKey().String(), State: *data, TCP: tcpAddr})
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
