package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/internal/atomicfile"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/agentnet/agentnet/trustdb"
)

// Defaults.
const (
	// DefaultLocalRendezvous is where zero-config daemons look for (and, if
	// nothing answers, start) the rendezvous they share. The port is the
	// default port of "agentnet rendezvous".
	DefaultLocalRendezvous = "127.0.0.1:7420"
	// SocketName is the control socket's file name in the state directory.
	SocketName = "agentnet.sock"
	// ConfigName is the config file's name in the state directory.
	ConfigName = "config.json"
	// InboxName is the inbox directory's name in the state directory.
	InboxName = "inbox"

	DefaultMaxInbox = 4 << 30
	maxSocketPath   = 104 // sun_path is 108 bytes on Linux, 104 on BSDs
)

// Service names, for Config.Disable.
const (
	ServiceEcho     = "echo"
	ServiceDiscard  = "discard"
	ServiceMessages = "messages"
	ServiceEvents   = "events"
)

var serviceNames = []string{ServiceEcho, ServiceDiscard, ServiceMessages, ServiceEvents}

// Config configures a Daemon. The zero value is a working zero-config
// daemon in the default state directory. Fill it from flags, the
// environment and the config file with Set (see Settings for the names),
// lowest precedence first: LoadFile, LoadEnv, then flags.
type Config struct {
	// StateDir holds the identity, trust store, inbox, config file and (by
	// default) the control socket. Default DefaultStateDir().
	StateDir string
	// Socket is the control socket's path; default StateDir/agentnet.sock.
	Socket string

	// RendezvousAddr is the rendezvous server, "host:port", or several
	// servers of one service, comma-separated (the node registers with
	// whichever answers and moves to another when it goes away; a name with
	// several addresses works too). Empty means zero
	// config: LocalRendezvous is used, and started in this process if
	// nothing answers there.
	RendezvousAddr string
	// RendezvousKey pins the server's key; zero trusts the first key seen
	// and pins it in the trust store.
	RendezvousKey addressing.PublicKey
	// RendezvousTCP is the rendezvous's TCP address for networks that let
	// no UDP out; "" means the rendezvous's host, port 443; "off" none.
	// The zero-config local rendezvous has no TCP side.
	RendezvousTCP string
	// Proxy is the HTTP proxy of the TCP path ("" honours HTTPS_PROXY,
	// https_proxy and NO_PROXY); ProxyCmd a shell command printing one,
	// re-run after a refusal.
	Proxy, ProxyCmd string
	// LocalRendezvous is the zero-config rendezvous address; default
	// DefaultLocalRendezvous.
	LocalRendezvous string
	// RendezvousDir is the embedded rendezvous's state directory, shared by
	// every daemon of the user so the server keeps one identity; default
	// DefaultBase()/rendezvous (…/rendezvous-PORT for a port other than 7420).
	RendezvousDir string

	// ListenAddr is the node's UDP address; default "0.0.0.0:0".
	ListenAddr string
	// Hostname is claimed at the rendezvous; optional.
	Hostname string

	// Disable lists built-in services to switch off: echo, discard,
	// messages, events.
	Disable []string
	// MaxMessage and MaxFile bound what peers may send us (defaults 1 MiB
	// and 1 GiB); MaxInbox bounds the inbox (default 4 GiB).
	MaxMessage, MaxFile, MaxInbox int64

	// MetricsAddr, if set, is a TCP address ("127.0.0.1:9464") serving
	// /metrics, /healthz and /readyz beside the control socket's
	// GET /v1/metrics.
	MetricsAddr string

	// Version is reported by the status endpoint.
	Version string
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// DefaultBase is the per-user agentnet directory: $AGENTNET_HOME, else
// os.UserConfigDir()/agentnet.
func DefaultBase() string {
	if h := os.Getenv("AGENTNET_HOME"); h != "" {
		return h
	}
	base, err := os.UserConfigDir()
	if err != nil {
		base = "."
	}
	return filepath.Join(base, "agentnet")
}

// DefaultStateDir is the state directory used when none is given:
// $AGENTNET_STATE, else DefaultBase()/node.
func DefaultStateDir() string {
	if s := os.Getenv("AGENTNET_STATE"); s != "" {
		return s
	}
	return filepath.Join(DefaultBase(), "node")
}

// SocketPath returns the control socket of the daemon with state directory
// dir: $AGENTNET_SOCKET if set, else the "socket" of dir's config file, else
// dir/agentnet.sock. Clients use it to find the daemon.
func SocketPath(dir string) string {
	if s := os.Getenv("AGENTNET_SOCKET"); s != "" {
		return s
	}
	if m, err := readFile(filepath.Join(dir, ConfigName)); err == nil {
		if s, ok := m["socket"].(string); ok && s != "" {
			return s
		}
	}
	return filepath.Join(dir, SocketName)
}

// Setting describes one configuration setting: its flag name (also its key
// in the config file) and its environment variable.
type Setting struct {
	Name    string `json:"name"`
	Env     string `json:"env"`
	Default string `json:"default"`
	Usage   string `json:"usage"`
}

// Settings lists every setting Set accepts.
var Settings = []Setting{
	{"socket", "AGENTNET_SOCKET", "<state>/" + SocketName, "control socket path"},
	{"rendezvous", "AGENTNET_RENDEZVOUS", "", "rendezvous server host:port, or several of one service comma-separated (empty: zero-config local rendezvous)"},
	{"rendezvous-key", "AGENTNET_RENDEZVOUS_KEY", "", "pin the rendezvous server key (empty: trust on first use)"},
	{"rendezvous-tcp", "AGENTNET_RENDEZVOUS_TCP", "<rendezvous host>:443", "the rendezvous's TCP (TLS/WebSocket) address, used when UDP does not get out; \"off\" for none"},
	{"proxy", "AGENTNET_PROXY", "", "HTTP proxy for the TCP path, http://[user:pass@]host:port (empty: HTTPS_PROXY/https_proxy, NO_PROXY)"},
	{"proxy-cmd", "AGENTNET_PROXY_CMD", "", "shell command printing the proxy URL; re-run after a refusal (rotating credentials)"},
	{"local-rendezvous", "AGENTNET_LOCAL_RENDEZVOUS", DefaultLocalRendezvous, "zero-config rendezvous address, started here if nothing answers"},
	{"rendezvous-state", "AGENTNET_RENDEZVOUS_STATE", "<home>/rendezvous", "state directory of the embedded rendezvous"},
	{"listen", "AGENTNET_LISTEN", "0.0.0.0:0", "UDP address of the node"},
	{"hostname", "AGENTNET_HOSTNAME", "", "hostname to claim at the rendezvous"},
	{"disable", "AGENTNET_DISABLE", "", "built-in services to switch off, comma-separated: echo,discard,messages,events"},
	{"max-message", "AGENTNET_MAX_MESSAGE", "1048576", "largest message peers may send us, bytes"},
	{"max-file", "AGENTNET_MAX_FILE", "1073741824", "largest file peers may send us, bytes"},
	{"max-inbox", "AGENTNET_MAX_INBOX", "4294967296", "inbox quota, bytes"},
	{"metrics", "AGENTNET_METRICS", "", "TCP address serving /metrics, /healthz, /readyz (empty: only GET /v1/metrics on the socket)"},
}

// Set applies one setting by its flag name.
func (c *Config) Set(name, value string) error {
	var err error
	switch name {
	case "socket":
		c.Socket = value
	case "rendezvous":
		c.RendezvousAddr = value
	case "rendezvous-key":
		c.RendezvousKey = addressing.PublicKey{}
		if value != "" {
			c.RendezvousKey, err = addressing.ParsePublicKey(value)
		}
	case "rendezvous-tcp":
		if value != "" && value != "off" {
			_, _, err = net.SplitHostPort(value)
		}
		c.RendezvousTCP = value
	case "proxy":
		if value != "" {
			_, err = tunnel.ParseProxyURL(value)
		}
		c.Proxy = value
	case "proxy-cmd":
		c.ProxyCmd = value
	case "local-rendezvous":
		c.LocalRendezvous = value
	case "rendezvous-state":
		c.RendezvousDir = value
	case "listen":
		c.ListenAddr = value
	case "hostname":
		c.Hostname = value
	case "metrics":
		c.MetricsAddr = value
	case "disable":
		c.Disable = nil
		for _, s := range strings.Split(value, ",") {
			if s = strings.TrimSpace(s); s != "" {
				c.Disable = append(c.Disable, s)
			}
		}
	case "max-message", "max-file", "max-inbox":
		var n int64
		n, err = strconv.ParseInt(value, 10, 64)
		if err == nil && n < 0 {
			err = errors.New("negative")
		}
		switch name {
		case "max-message":
			c.MaxMessage = n
		case "max-file":
			c.MaxFile = n
		default:
			c.MaxInbox = n
		}
	default:
		return fmt.Errorf("daemon: unknown setting %q", name)
	}
	if err != nil {
		return fmt.Errorf("daemon: setting %s=%q: %w", name, value, err)
	}
	return nil
}

// LoadEnv applies the AGENTNET_* environment variables that are set.
func (c *Config) LoadEnv(getenv func(string) string) error {
	for _, s := range Settings {
		if v := getenv(s.Env); v != "" {
			if err := c.Set(s.Name, v); err != nil {
				return fmt.Errorf("%w (from %s)", err, s.Env)
			}
		}
	}
	return nil
}

// LoadFile applies the config file StateDir/config.json if it exists: a JSON
// object whose keys are setting names and whose values are strings or
// numbers, e.g. {"rendezvous": "rdv.example:7420", "hostname": "alice"}.
func (c *Config) LoadFile() error {
	p := filepath.Join(c.stateDir(), ConfigName)
	m, err := readFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var v string
		switch x := m[k].(type) {
		case string:
			v = x
		case float64:
			v = strconv.FormatFloat(x, 'f', -1, 64)
		case []any:
			parts := make([]string, 0, len(x))
			for _, e := range x {
				parts = append(parts, fmt.Sprint(e))
			}
			v = strings.Join(parts, ",")
		default:
			return fmt.Errorf("daemon: config file %s: %q: want a string or number", p, k)
		}
		if err := c.Set(k, v); err != nil {
			return fmt.Errorf("daemon: config file %s: %w", p, err)
		}
	}
	return nil
}

// readFile reads the config file. A file that is not one JSON object
// (empty, truncated, garbage) is damage: a *StateError, never taken for an
// empty config (and so never overwritten by setFileKey).
func readFile(p string) (map[string]any, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("daemon: config file %s: %w", p, err)
	}
	var m map[string]any
	err = json.Unmarshal(b, &m)
	if err == nil && m == nil {
		err = errors.New("null")
	}
	if err != nil {
		return nil, &StateError{Path: p, Reason: "not a JSON object: " + err.Error(), Err: err,
			Fix: "it holds the settings you saved (and \"agentnet hostname set\" saves): fix the JSON, or move the file aside to run with the defaults"}
	}
	return m, nil
}

// ErrDamaged is matched (errors.Is) by the errors of Run and LoadFile when a
// state file is damaged, missing or unsafe: the identity key or trust store
// (a *trustdb.DamagedError), the inbox index or the config file (a
// *StateError). Nothing was changed; the error's Hint method says how to
// restore.
var ErrDamaged = trustdb.ErrDamaged

// StateError is a damaged state file of the daemon's own: the config file,
// the inbox index. It matches ErrDamaged.
type StateError struct {
	Path   string // the damaged file or directory
	Reason string // what is wrong
	Fix    string // how to restore it
	Err    error  // the underlying error, if any
}

func (e *StateError) Error() string { return "daemon: " + e.Path + ": " + e.Reason }

// Hint says how to restore the file.
func (e *StateError) Hint() string { return e.Fix }

// Unwrap returns the underlying error.
func (e *StateError) Unwrap() error { return e.Err }

// Is reports whether target is ErrDamaged.
func (e *StateError) Is(target error) bool { return target == ErrDamaged }

// setFileKey sets (or with "" removes) one key of the config file, keeping
// the others.
func setFileKey(dir, key, value string) error {
	p := filepath.Join(dir, ConfigName)
	m, err := readFile(p)
	if errors.Is(err, os.ErrNotExist) {
		m, err = map[string]any{}, nil
	}
	if err != nil {
		return err
	}
	if value == "" {
		delete(m, key)
	} else {
		m[key] = value
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	return atomicfile.WriteFile(p, append(b, '\n'), 0o600)
}

func (c *Config) stateDir() string {
	if c.StateDir == "" {
		return DefaultStateDir()
	}
	return c.StateDir
}

func (c *Config) socket() string {
	if c.Socket == "" {
		return filepath.Join(c.stateDir(), SocketName)
	}
	return c.Socket
}

// RendezvousAddrs returns the configured rendezvous servers: RendezvousAddr
// split at its commas, blanks dropped (none: zero config).
func (c *Config) RendezvousAddrs() []string { return c.rendezvousAddrs() }

// rendezvousAddrs splits RendezvousAddr's comma-separated list.
func (c *Config) rendezvousAddrs() []string {
	var out []string
	for _, a := range strings.Split(c.RendezvousAddr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func (c *Config) localRendezvous() string {
	if c.LocalRendezvous == "" {
		return DefaultLocalRendezvous
	}
	return c.LocalRendezvous
}

func (c *Config) rendezvousDir() string {
	if c.RendezvousDir != "" {
		return c.RendezvousDir
	}
	_, port, _ := net.SplitHostPort(c.localRendezvous())
	if port == "7420" {
		return filepath.Join(DefaultBase(), "rendezvous")
	}
	return filepath.Join(DefaultBase(), "rendezvous-"+port)
}

func (c *Config) enabled(service string) bool {
	for _, s := range c.Disable {
		if s == service {
			return false
		}
	}
	return true
}

func (c *Config) validate() error {
	if c.Hostname != "" {
		if err := addressing.ValidateHostname(c.Hostname); err != nil {
			return fmt.Errorf("daemon: hostname: %w", err)
		}
	}
	if c.RendezvousAddr != "" && len(c.rendezvousAddrs()) == 0 {
		return fmt.Errorf("daemon: rendezvous %q: no address", c.RendezvousAddr)
	}
	addrs := []struct{ name, v string }{{"local-rendezvous", c.LocalRendezvous}, {"listen", c.ListenAddr}, {"metrics", c.MetricsAddr}}
	for _, r := range c.rendezvousAddrs() {
		addrs = append(addrs, struct{ name, v string }{"rendezvous", r})
	}
	for _, a := range addrs {
		if a.v == "" {
			continue
		}
		_, port, err := net.SplitHostPort(a.v)
		if err != nil {
			return fmt.Errorf("daemon: %s address %q: %w", a.name, a.v, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); a.name == "rendezvous" && (err != nil || n == 0) {
			return fmt.Errorf("daemon: rendezvous address %q: port %q (want 1 to 65535)", a.v, port)
		}
	}
	for _, s := range c.Disable {
		ok := false
		for _, n := range serviceNames {
			ok = ok || s == n
		}
		if !ok {
			return fmt.Errorf("daemon: disable: unknown service %q (want %s)", s, strings.Join(serviceNames, ", "))
		}
	}
	if p := c.socket(); len(p) >= maxSocketPath {
		return fmt.Errorf("daemon: socket path %s is %d bytes, the system allows %d: set --socket (AGENTNET_SOCKET) to a shorter path", p, len(p), maxSocketPath-1)
	}
	return nil
}

// rendezvousTCP returns the TCP fallback address for a configured
// rendezvous ("" for none).
func (c *Config) rendezvousTCP() string {
	switch c.RendezvousTCP {
	case "off":
		return ""
	case "":
		addrs := c.rendezvousAddrs() // with several servers: the first one's host
		if len(addrs) == 0 {
			return ""
		}
		host, _, err := net.SplitHostPort(addrs[0])
		if err != nil {
			return ""
		}
		return net.JoinHostPort(host, "443")
	}
	return c.RendezvousTCP
}

// proxy returns the TCP path's proxy configuration.
func (c *Config) proxy() tunnel.ProxyConfig {
	p := tunnel.ProxyConfig{Cmd: c.ProxyCmd, Environment: true}
	if c.Proxy != "" {
		p.URL, _ = tunnel.ParseProxyURL(c.Proxy) // checked by Set
	}
	return p
}
