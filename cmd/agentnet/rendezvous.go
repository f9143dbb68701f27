package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/agentnet/agentnet/internal/metrics"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/relay"
	"github.com/agentnet/agentnet/trustdb"
)

// DefaultRendezvousPort is the UDP port a rendezvous listens on by default.
const DefaultRendezvousPort = 7420

func init() {
	register(&command{name: "rendezvous", summary: "run a rendezvous server (registry, trust mailbox)", run: runRendezvous})
}

// rendezvousFlags are the command's settings; the config file's keys are
// the same names.
type rendezvousFlags struct {
	listen, data, identity, store, metrics, logFormat, advertise      string
	etcdCA, etcdCert, etcdKey, etcdUser, etcdPasswordFile, etcdPrefix string
	listenTCP, tlsCert, tlsKey                                        string
	relayRate                                                         int
	etcdLeaseTTL, etcdTimeout                                         time.Duration
	verbose, initStore, json                                          bool
	limits                                                            rendezvous.Limits
}

func runRendezvous(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rendezvous", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f rendezvousFlags
	fs.StringVar(&f.listen, "listen", fmt.Sprintf(":%d", DefaultRendezvousPort), "UDP address to serve on")
	fs.StringVar(&f.data, "data", defaultDataDir("rendezvous"), "state directory (identity; the registry with the bbolt store)")
	fs.StringVar(&f.identity, "identity", "", "the server's key file (default <data>/identity.key); servers of one cluster may share one, so agents pin one key")
	fs.StringVar(&f.listenTCP, "listen-tcp", "", "TCP address of the TLS/WebSocket listener for agents whose network lets no UDP out (production: :443; empty: off)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate the TCP listener presents (default: the server key's self-signed one, which agents pin)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM key of -tls-cert")
	fs.IntVar(&f.relayRate, "relay-rate", 0, fmt.Sprintf("relay budget per session, bytes/s, both directions (default %d; also limits.relay-rate in -config)", relay.DefaultRate))
	fs.StringVar(&f.store, "store", "bbolt", "bbolt (a file in -data) or etcd://host:2379[,host:2379...][/prefix] (several servers, one service)")
	fs.StringVar(&f.metrics, "metrics", "", "TCP address serving /metrics (Prometheus), /healthz and /readyz (empty: none)")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.advertise, "advertise", "", "with etcd: the IP agents of other servers reach this server's relay at (default: the -listen IP, if not a wildcard)")
	fs.StringVar(&f.etcdCA, "etcd-ca", "", "etcd: CA certificate file (TLS)")
	fs.StringVar(&f.etcdCert, "etcd-cert", "", "etcd: client certificate file (TLS)")
	fs.StringVar(&f.etcdKey, "etcd-key", "", "etcd: client key file (TLS)")
	fs.StringVar(&f.etcdUser, "etcd-user", "", "etcd: user name (etcd auth)")
	fs.StringVar(&f.etcdPasswordFile, "etcd-password-file", "", "etcd: file holding the user's password")
	fs.StringVar(&f.etcdPrefix, "etcd-prefix", "", "etcd: key prefix (default "+rendezvous.DefaultEtcdPrefix+", or the path of -store)")
	fs.DurationVar(&f.etcdLeaseTTL, "etcd-lease-ttl", rendezvous.DefaultEtcdLeaseTTL, "etcd: lease of this server's sessions; also how long it answers without hearing from etcd")
	fs.DurationVar(&f.etcdTimeout, "etcd-timeout", rendezvous.DefaultEtcdTimeout, "etcd: bound of each write, retries included")
	fs.BoolVar(&f.verbose, "v", false, "log debug messages")
	fs.BoolVar(&f.initStore, "init-store", false, "start with an empty store although the server identity exists (a deliberate fresh start)")
	fs.BoolVar(&f.json, "json", false, "print one JSON object once serving: {addr, key, state, store, tcp, metrics} (errors too)")
	config := fs.String("config", "", "JSON config file: an object with these flags' names as keys, and \"limits\": {\"key-rate\": 20, ...} (flags given on the command line win)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agentnet rendezvous: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *config != "" {
		if err := applyRendezvousConfig(fs, *config, &f.limits); err != nil {
			fmt.Fprintln(stderr, "agentnet rendezvous:", err)
			return 2
		}
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	log, err := newLogger(stderr, f.logFormat, level)
	if err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous:", err)
		return 2
	}
	code, err := serveRendezvous(ctx, &f, log, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "agentnet rendezvous:", err)
	}
	return code
}

// serveRendezvous runs the server until ctx ends.
func serveRendezvous(ctx context.Context, f *rendezvousFlags, log *slog.Logger, stdout io.Writer) (int, error) {
	cfg := rendezvous.ServerConfig{Addr: f.listen, DataDir: f.data, InitStore: f.initStore, Logger: log, Limits: f.limits, TCP: rendezvous.TCPConfig{Addr: f.listenTCP}}
	switch {
	case f.relayRate < 0:
		return 2, errors.New("-relay-rate must not be negative")
	case f.relayRate > 0:
		cfg.Limits.RelayRate = f.relayRate
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return 2, errors.New("-tls-cert and -tls-key go together")
	}
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return 1, fmt.Errorf("TLS certificate: %w", err)
		}
		cfg.TCP.Certificate = &cert
	}
	if f.identity != "" {
		id, _, err := trustdb.LoadOrCreateIdentity(f.identity)
		if err != nil {
			return 1, fmt.Errorf("identity %s: %w", f.identity, err)
		}
		cfg.Identity = id
	}
	storeDesc := "bbolt in " + f.data
	var etcdStore *rendezvous.EtcdStore
	switch {
	case f.store == "bbolt" || f.store == "":
	case strings.HasPrefix(f.store, "etcd://"):
		ecfg, err := etcdConfig(f, log)
		if err != nil {
			return 2, err
		}
		octx, cancel := context.WithTimeout(ctx, ecfg.Timeout+5*time.Second)
		etcdStore, err = rendezvous.OpenEtcdStore(octx, ecfg)
		cancel()
		if err != nil {
			return 1, err
		}
		defer etcdStore.Close()
		cfg.Store = etcdStore
		storeDesc = fmt.Sprintf("etcd %s prefix %s", strings.Join(ecfg.Endpoints, ","), ecfg.Prefix)
	default:
		return 2, fmt.Errorf("-store %q: want bbolt or etcd://host:port[,host:port...]", f.store)
	}
	srv, err := rendezvous.NewServer(cfg)
	if err != nil {
		return 2, err
	}
	if err := srv.Start(); err != nil {
		return 1, err
	}
	var ms *metrics.Server
	if f.metrics != "" {
		if ms, err = metrics.Listen(f.metrics, metrics.Handler(metrics.Rendezvous(srv), srv.Ready), log); err != nil {
			srv.Close()
			return 1, err
		}
		defer ms.Close()
	}
	out := rendezvousServing{Addr: srv.Addr().String(), Key: srv.PublicKey().String(), State: f.data, Store: storeDesc}
	if a := srv.TCPAddr(); a != nil {
		out.TCP = a.String()
	}
	if ms != nil {
		out.Metrics = "http://" + ms.Addr().String() + "/metrics"
	}
	printServing(stdout, f.json, out)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return 1, fmt.Errorf("shutdown: %w", err)
	}
	return 0, nil
}

// etcdConfig builds the store's configuration from the flags.
func etcdConfig(f *rendezvousFlags, log *slog.Logger) (rendezvous.EtcdConfig, error) {
	endpoints, prefix, err := rendezvous.ParseEtcdURL(f.store)
	if err != nil {
		return rendezvous.EtcdConfig{}, err
	}
	if f.etcdPrefix != "" {
		prefix = f.etcdPrefix
	}
	cfg := rendezvous.EtcdConfig{Prefix: prefix, LeaseTTL: f.etcdLeaseTTL, Timeout: f.etcdTimeout, Logger: log, Username: f.etcdUser}
	if f.etcdCA != "" || f.etcdCert != "" || f.etcdKey != "" {
		if (f.etcdCert == "") != (f.etcdKey == "") {
			return cfg, errors.New("-etcd-cert and -etcd-key go together")
		}
		info := transport.TLSInfo{CertFile: f.etcdCert, KeyFile: f.etcdKey, TrustedCAFile: f.etcdCA}
		var tc *tls.Config
		if tc, err = info.ClientConfig(); err != nil {
			return cfg, fmt.Errorf("etcd TLS: %w", err)
		}
		cfg.TLS = tc
	}
	scheme := "http://"
	if cfg.TLS != nil {
		scheme = "https://"
	}
	for _, e := range endpoints {
		cfg.Endpoints = append(cfg.Endpoints, scheme+e)
	}
	if f.etcdPasswordFile != "" {
		if f.etcdUser == "" {
			return cfg, errors.New("-etcd-password-file needs -etcd-user")
		}
		b, err := os.ReadFile(f.etcdPasswordFile)
		if err != nil {
			return cfg, fmt.Errorf("etcd password: %w", err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
	}
	if f.advertise != "" {
		if cfg.Advertise, err = netip.ParseAddr(f.advertise); err != nil {
			return cfg, fmt.Errorf("-advertise %q: want an IP address", f.advertise)
		}
	}
	return cfg, nil
}

// applyRendezvousConfig applies the config file at path: every key but
// "limits" is a flag name whose value (a string, number or boolean) is used
// unless the flag was given on the command line; "limits" is an object of
// rendezvous.Limits settings (rendezvous.ParseLimits).
func applyRendezvousConfig(fs *flag.FlagSet, path string, limits *rendezvous.Limits) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("config file %s: want a JSON object: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("config file %s: data after the JSON object", path)
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		raw := m[k]
		if k == "limits" {
			if *limits, err = rendezvous.ParseLimits(raw); err != nil {
				return fmt.Errorf("config file %s: %w", path, err)
			}
			continue
		}
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("config file %s: unknown key %q (the keys are the flags of \"agentnet rendezvous -h\", and \"limits\")", path, k)
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("config file %s: %q: %w", path, k, err)
		}
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case float64:
			s = strconv.FormatFloat(x, 'f', -1, 64)
		case bool:
			s = strconv.FormatBool(x)
		default:
			return fmt.Errorf("config file %s: %q: want a string, number or boolean", path, k)
		}
		if given[k] {
			continue
		}
		if err := fs.Set(k, s); err != nil {
			return fmt.Errorf("config file %s: %q: %w", path, k, err)
		}
	}
	return nil
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
