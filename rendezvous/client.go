package rendezvous

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/trustdb"
)

// Client timing.
const (
	// KeepAlivePeriod is the QUIC keepalive of the session's connection
	// (the Pings on the session stream come more often; see SessionIdle).
	KeepAlivePeriod = 15 * time.Second
	// SessionIdle is the idle timeout of the session's connection: the
	// client declares the session lost and registers again when the server
	// has not acknowledged its traffic (a Ping every PingPeriod) for this
	// long. A server that died is noticed within PingPeriod + SessionIdle
	// (4.5 s) of its last packet, one that restarted at the next Ping (its
	// stateless reset).
	SessionIdle = 3 * time.Second
	// PingPeriod is how often the client writes a Ping on its session stream.
	PingPeriod = 1500 * time.Millisecond
	// handshakeIdle bounds one connection attempt, so a dial that started
	// while the server was down is retried with fresh retransmission timers
	// rather than waiting out quic-go's long backoff.
	handshakeIdle = 3 * time.Second
	minBackoff    = 100 * time.Millisecond
	maxBackoff    = 2 * time.Second
	// permanentBackoff paces retries after a failure that only the operator
	// can fix (hostname or NodeID taken, server key not the pinned one).
	permanentBackoff = 30 * time.Second
	dialTimeout      = 10 * time.Second
	// minRequestSize pads request frames so their packets exceed 42 bytes:
	// a server restarted after a crash answers those with a stateless reset,
	// and the client reconnects at once instead of after the idle timeout.
	minRequestSize = 64
)

// PinStore remembers the rendezvous key a node pinned: one key per node,
// whatever name or address the server is configured under (so an alias or
// a config edit such as localhost:7420 → 127.0.0.1:7420 cannot make the
// node trust another key). It changes only when the user configures a key
// explicitly (ClientConfig.ServerKey). Implementations must be safe for
// concurrent use; trustdb.Store's Meta settings are a natural backing.
type PinStore interface {
	// Pin returns the pinned key.
	Pin() (addressing.PublicKey, bool)
	// SetPin pins k, replacing the pinned key.
	SetPin(k addressing.PublicKey) error
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Identity is the agent's key; the client authenticates with it. Required.
	Identity *trustdb.Identity
	// Transport is the node's own QUIC transport: dialling from the node's
	// socket makes the server see that socket's NAT mapping (the reflexive
	// address). Required unless Dial is set. The client never closes it.
	Transport *quic.Transport
	// Dial, if set, makes each connection to the server instead of
	// Transport (a node's path manager picks UDP or a TCP tunnel). It
	// must use tlsConf and qconf as given; server is ServerAddr.
	Dial func(ctx context.Context, server string, tlsConf *tls.Config, qconf *quic.Config) (*quic.Conn, error)
	// ServerAddr is the server's UDP address, "host:port". Required. It is
	// resolved again on every connection attempt; a name with several
	// addresses is several servers.
	ServerAddr string
	// ServerAddrs lists more servers of the same service (several servers
	// on one etcd, see the package doc): every connection attempt tries
	// them all, staggered, and keeps the first that answers
	// (clientservers.go). They share one server key.
	ServerAddrs []string
	// ServerKey is the server's key, configured explicitly. If zero, Pins
	// decides: the node's pinned key is required (whatever ServerAddr says),
	// and with none the first key seen is trusted and pinned (trust on first
	// use). If set, it is also pinned, replacing an earlier pin: configuring
	// a key is how a user changes the pin.
	ServerKey addressing.PublicKey
	// Pins stores the node's pin; it may be nil when ServerKey is set.
	Pins PinStore
	// Hostname is claimed at registration if not empty.
	Hostname string
	// LocalAddrs are the node socket's host candidates (LAN addresses), at
	// most proto.MaxLocators.
	LocalAddrs []netip.AddrPort
	// Deliver receives each trust message (an encoded trustdb.Message)
	// from the agent's mailbox, one at a time, in order. The message is
	// acknowledged (deleted at the server) only after Deliver returns
	// nil; otherwise it is delivered again on the next connection. The slice
	// is the callee's. Deliver must return soon after ctx is cancelled (Close
	// waits for it). nil leaves every message in the mailbox.
	Deliver func(ctx context.Context, msg []byte) error
	// Introduced receives each introduction the server pushes because a
	// trusted peer called Connect for us: probe its candidates with the
	// token, and bind the relay grant if any. Best effort: nothing is acked
	// or redelivered. It is called from the session goroutine, between
	// mailbox deliveries, so it must not block (hand the work to another
	// goroutine). nil ignores introductions.
	Introduced func(Introduce)
	// Network receives the network documents the server pushes: after each
	// registration the full list of every network we own or are in (and
	// the Leave or Remove that ended a membership of ours), later every
	// change. It is called from the session goroutine, in order, one at a
	// time; verify every document before acting on it. nil ignores them.
	Network func(NetworkState)
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// Introduce is an introduction to a peer for hole punching: from Connect
// (Initiator set: we dial) or pushed to ClientConfig.Introduced (the peer
// dials). Both sides get the same Token. Candidates is the caller's.
type Introduce struct {
	Peer       addressing.PublicKey
	PeerAddr   addressing.Addr  // the peer's address (network 0)
	Candidates []netip.AddrPort // the peer's: server-observed reflexive first, then its reported ones; at most 8
	Token      [proto.TokenSize]byte
	Initiator  bool
	Relay      *RelayGrant // nil if no relay session was opened
	// PeerNAT is the NAT kind the peer last reported (ReportNAT): "none",
	// "easy", "hard" or "unknown".
	PeerNAT string
}

// RelayGrant is our side of a relay session opened for an introduction.
type RelayGrant struct {
	// Addr is the relay's UDP address as this client can reach it: the
	// host of the server address it dialled, unless the server announced
	// another.
	Addr    netip.AddrPort
	Session [proto.RelaySessionSize]byte
	Secret  [proto.RelaySecretSize]byte // this side's Bind key; never share it
	Side    uint8                       // 0 (initiator) or 1
}

// PeerInfo is what Lookup learns about an agent.
type PeerInfo struct {
	Key      addressing.PublicKey
	Addr     addressing.Addr // network 0
	Hostname string
	Online   bool
	Locators []netip.AddrPort // reflexive first, then local; last known if offline
}

// Client is a node's connection to the rendezvous: it registers, keeps the
// registration alive across server restarts and network changes, receives
// its mailbox, and makes requests. Its methods are safe for concurrent use.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	cert tls.Certificate

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	started   bool
	closed    bool
	conn      *quic.Conn    // registered connection; nil when not registered
	changed   chan struct{} // closed and replaced on every change of conn or lastErr
	self      addressing.Addr
	reflexive netip.AddrPort
	server    netip.AddrPort // the server address of the last registration
	stun2     netip.AddrPort // its second STUN address, resolved; invalid if none
	hostname  string         // to claim on (re)registration
	lastErr   error          // the last registration refusal that only the operator can fix
	status    SessionStatus  // what setStateLocked last made of conn, lastErr and closed
	since     time.Time      // when status last changed
	failErr   error          // the last failure of a connection attempt or session
	failAt    time.Time

	servers serverList // which server to try first (clientservers.go)
}

// SessionStatus is the state of a client's session with the server.
type SessionStatus string

// Session states (SessionState.Status).
const (
	// SessionConnecting: not registered; the client is dialling or
	// registering, or waiting to retry (LastError says why).
	SessionConnecting SessionStatus = "connecting"
	// SessionRegistered: registered on a connection the server keeps
	// acknowledging (see SessionIdle).
	SessionRegistered SessionStatus = "registered"
	// SessionRefused: the last attempt was refused for a reason only the
	// operator can fix (LastError: ErrHostnameTaken, ErrNodeIDTaken,
	// ErrServerKey); the client retries every 30 s.
	SessionRefused SessionStatus = "refused"
	// SessionClosed: the client was closed.
	SessionClosed SessionStatus = "closed"
)

// SessionState is a snapshot of a client's session (Client.State).
type SessionState struct {
	Status SessionStatus
	// Since is when Status last changed (zero before Start).
	Since time.Time
	// Server is the server address of the current registration (registered
	// only).
	Server netip.AddrPort
	// LastError is the most recent failure: why the last session ended or
	// the last attempt failed (nil if none yet). It is kept after the next
	// registration, with LastErrorAt, so a status can tell a fresh session
	// from an old one.
	LastError   error
	LastErrorAt time.Time
}

// NewClient checks cfg and returns a client that is not yet connected. It
// does no I/O.
func NewClient(cfg ClientConfig) (*Client, error) {
	switch {
	case cfg.Identity == nil:
		return nil, errors.New("rendezvous: ClientConfig.Identity is required")
	case cfg.Transport == nil && cfg.Dial == nil:
		return nil, errors.New("rendezvous: ClientConfig.Transport or Dial is required")
	case cfg.ServerKey.IsZero() && cfg.Pins == nil:
		return nil, errors.New("rendezvous: ClientConfig: set ServerKey or Pins")
	case len(cfg.LocalAddrs) > proto.MaxLocators:
		return nil, fmt.Errorf("rendezvous: ClientConfig.LocalAddrs: %d addresses, max %d", len(cfg.LocalAddrs), proto.MaxLocators)
	}
	if err := cfg.checkServerAddrs(); err != nil {
		return nil, err
	}
	if cfg.Hostname != "" {
		if err := addressing.ValidateHostname(cfg.Hostname); err != nil {
			return nil, fmt.Errorf("rendezvous: ClientConfig.Hostname: %w", err)
		}
	}
	for _, ap := range cfg.LocalAddrs {
		if !ap.IsValid() {
			return nil, fmt.Errorf("rendezvous: ClientConfig.LocalAddrs: invalid address %v", ap)
		}
	}
	cert, err := certs.Certificate(cfg.Identity.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("rendezvous: client certificate: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.LocalAddrs = append([]netip.AddrPort(nil), cfg.LocalAddrs...)
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		cfg:      cfg,
		log:      log,
		cert:     cert,
		ctx:      ctx,
		cancel:   cancel,
		changed:  make(chan struct{}),
		hostname: cfg.Hostname,
	}, nil
}

// Start runs the session loop in the background: connect, register, receive
// the mailbox, and on any failure reconnect with backoff (100 ms doubling to
// 2 s). Calling it again, or after Close, does nothing.
func (c *Client) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started || c.closed {
		return
	}
	c.started = true
	c.status, c.since = SessionConnecting, time.Now()
	c.wg.Add(1)
	go c.sessionLoop()
}

// WaitReady blocks until the client is registered, ctx ends, the client is
// closed (an error wrapping net.ErrClosed) or registration failed for a
// reason only the operator can fix (ErrHostnameTaken, ErrNodeIDTaken,
// ErrServerKey; the client keeps retrying every 30 s).
func (c *Client) WaitReady(ctx context.Context) error {
	_, err := c.readyConn(ctx)
	return err
}

func (c *Client) readyConn(ctx context.Context) (*quic.Conn, error) {
	for {
		c.mu.Lock()
		conn, closed, lastErr, ch := c.conn, c.closed, c.lastErr, c.changed
		c.mu.Unlock()
		switch {
		case closed:
			return nil, fmt.Errorf("rendezvous: client: %w", net.ErrClosed)
		case conn != nil:
			return conn, nil
		case lastErr != nil:
			return nil, lastErr
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("rendezvous: waiting for registration: %w", ctx.Err())
		}
	}
}

// setStateLocked updates the connection state and wakes waiters.
func (c *Client) setStateLocked(conn *quic.Conn, lastErr error) {
	c.conn = conn
	c.lastErr = lastErr
	st := SessionConnecting
	switch {
	case c.closed:
		st = SessionClosed
	case conn != nil:
		st = SessionRegistered
	case lastErr != nil:
		st = SessionRefused
	}
	if st != c.status {
		c.status, c.since = st, time.Now()
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// State returns the session's state as of now: registered only while the
// server keeps acknowledging the session's traffic (a session whose server
// died is reported lost within PingPeriod + SessionIdle, not after QUIC's
// usual 30 s), with the last failure and when it happened.
func (c *Client) State() SessionState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := SessionState{Status: c.status, Since: c.since, LastError: c.failErr, LastErrorAt: c.failAt}
	if st.Status == "" {
		st.Status = SessionConnecting
	}
	if c.conn != nil {
		st.Server = c.server
	}
	return st
}

// Close stops the session loop, closes the connection to the server and
// waits for every goroutine of the client. It is idempotent. Later calls
// fail with an error wrapping net.ErrClosed. The node's Transport stays open.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conn := c.conn
	c.setStateLocked(nil, nil)
	c.mu.Unlock()
	c.cancel()
	if conn != nil {
		conn.CloseWithError(0, "client closing")
	}
	c.wg.Wait()
	return nil
}

// Self returns the agent's address and its reflexive address as last
// registered (zero values before the first registration).
func (c *Client) Self() (addressing.Addr, netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.self, c.reflexive
}

// STUNAddrs returns the server's two STUN addresses as of the last
// registration: main is the server address the client dialled (STUN is
// answered beside QUIC there), alt the second STUN address, invalid if the
// server has none. Both are invalid before the first registration.
func (c *Client) STUNAddrs() (main, alt netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server, c.stun2
}

// resolveService turns a service address announced by the server (see
// proto.Registered) into a UDP address, using the host of server, the
// address dialled, when it carries only a port. Port 0 gives the zero value.
func resolveService(svc, server netip.AddrPort) netip.AddrPort {
	switch {
	case svc.Port() == 0:
		return netip.AddrPort{}
	case !svc.Addr().IsValid():
		return netip.AddrPortFrom(server.Addr(), svc.Port())
	}
	return netip.AddrPortFrom(svc.Addr().Unmap(), svc.Port())
}

// remoteAddrPort returns qc's remote address, unmapped.
func remoteAddrPort(qc *quic.Conn) netip.AddrPort {
	ua, ok := qc.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (c *Client) sessionLoop() {
	defer c.wg.Done()
	backoff := minBackoff
	for {
		registered, err := c.runSession()
		if c.ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.failErr, c.failAt = err, time.Now()
		c.mu.Unlock()
		if registered {
			c.log.Info("rendezvous session lost; registering again", "server", c.cfg.ServerAddr, "err", err)
		}
		wait := backoff
		switch {
		case registered:
			backoff, wait = minBackoff, minBackoff
		case errors.Is(err, ErrHostnameTaken) || errors.Is(err, ErrNodeIDTaken) || errors.Is(err, ErrServerKey):
			wait = permanentBackoff
		default:
			backoff = min(2*backoff, maxBackoff)
		}
		c.log.Debug("rendezvous session ended", "server", c.cfg.ServerAddr, "err", err, "retry_in", wait)
		// Jitter in [wait/2, wait) spreads reconnects after a server restart.
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return
		}
	}
}

// runSession makes one connection and serves it until it fails. It reports
// whether the agent got registered on it.
func (c *Client) runSession() (registered bool, err error) {
	qc, err := c.dialAny()
	if err != nil {
		if errors.Is(err, ErrServerKey) {
			c.mu.Lock()
			c.setStateLocked(nil, err)
			c.mu.Unlock()
		}
		return false, err
	}
	defer qc.CloseWithError(0, "")
	// Close ends the connection whatever step the session is at.
	stop := context.AfterFunc(c.ctx, func() { qc.CloseWithError(0, "client closing") })
	defer stop()
	ctx := qc.Context()

	str, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return false, fmt.Errorf("rendezvous: open session stream: %w", err)
	}
	c.mu.Lock()
	reg := &proto.Register{Hostname: c.hostname, LocalAddrs: c.cfg.LocalAddrs}
	c.mu.Unlock()
	b, err := proto.AppendMessage(nil, reg)
	if err != nil {
		return false, fmt.Errorf("rendezvous: register: %w", err)
	}
	str.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := str.Write(b); err != nil {
		return false, fmt.Errorf("rendezvous: register: %w", err)
	}
	f, err := proto.ReadFrame(str, proto.MaxBody)
	if err != nil {
		return false, fmt.Errorf("rendezvous: register: %w", err)
	}
	m, err := proto.ParseMessage(f)
	if err != nil {
		return false, fmt.Errorf("rendezvous: register: %w", err)
	}
	switch m := m.(type) {
	case *proto.Registered:
		if m.Addr != c.cfg.Identity.Addr() {
			return false, fmt.Errorf("rendezvous: register: server gave address %s, ours is %s", m.Addr, c.cfg.Identity.Addr())
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return false, fmt.Errorf("rendezvous: %w", net.ErrClosed)
		}
		c.self, c.reflexive = m.Addr, m.Reflexive
		c.server = remoteAddrPort(qc)
		c.stun2 = resolveService(m.STUN2, c.server)
		c.setStateLocked(qc, nil)
		c.mu.Unlock()
		c.servers.served(c.server)
		c.log.Info("rendezvous registered", "server", c.cfg.ServerAddr, "addr", m.Addr.String(),
			"reflexive", m.Reflexive.String(), "hostname", m.Hostname)
	case *proto.Error:
		err := &ServerError{Code: m.Code, Text: m.Text}
		c.mu.Lock()
		if errors.Is(err, ErrHostnameTaken) || errors.Is(err, ErrNodeIDTaken) {
			c.setStateLocked(nil, fmt.Errorf("rendezvous: register: %w", err))
		}
		c.mu.Unlock()
		c.servers.fail(remoteAddrPort(qc)) // e.g. a server cut off from its store: try another first
		return false, err
	default:
		return false, fmt.Errorf("rendezvous: register: unexpected %s", f.Type)
	}
	defer func() {
		c.mu.Lock()
		if c.conn == qc {
			c.setStateLocked(nil, nil)
		}
		c.mu.Unlock()
		if c.ctx.Err() == nil {
			c.servers.fail(remoteAddrPort(qc)) // the next attempt starts with another server
		}
	}()
	str.SetDeadline(time.Time{})
	w := &sessionWriter{str: str}
	pingCtx, stopPing := context.WithCancel(ctx)
	pinged := make(chan struct{})
	go func() { // owned here: waited for below
		defer close(pinged)
		c.pingLoop(pingCtx, w)
	}()
	err = c.receive(ctx, str, w, remoteAddrPort(qc))
	stopPing()
	<-pinged
	return true, err
}

// sessionWriter serialises the writes of the session stream (Acks, Pings).
type sessionWriter struct {
	mu  sync.Mutex
	str *quic.Stream
}

func (w *sessionWriter) write(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.str.SetWriteDeadline(time.Now().Add(requestTimeout))
	_, err := w.str.Write(b)
	return err
}

// pingLoop writes a padded Ping on the session stream every PingPeriod
// until ctx ends: the server's acknowledgements keep the connection's
// SessionIdle timeout from expiring, and a restarted server answers the
// (large enough) packet with a stateless reset, which ends the session at
// once.
func (c *Client) pingLoop(ctx context.Context, w *sessionWriter) {
	ping, _ := proto.AppendMessage(nil, &proto.Ping{})
	ping = proto.Pad(ping, minRequestSize)
	t := time.NewTicker(PingPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := w.write(ping); err != nil {
			return // the session is ending; receive reports why
		}
	}
}

// dial connects to the server name at addr (invalid: name unresolved,
// left to the Dial func), pinning its key (or pinning it on first use).
func (c *Client) dial(ctx context.Context, name string, addr netip.AddrPort) (*quic.Conn, error) {
	var raddr *net.UDPAddr
	server := name
	if addr.IsValid() {
		raddr, server = net.UDPAddrFromAddrPort(addr), addr.String()
	} else if c.cfg.Dial == nil {
		return nil, fmt.Errorf("rendezvous: resolve %s: no address", name)
	}
	want := c.cfg.ServerKey
	tofu, pinned := false, false
	if want.IsZero() {
		if k, ok := c.cfg.Pins.Pin(); ok && !k.IsZero() {
			want, pinned = k, true
		} else {
			tofu = true
		}
	}
	// The pin is checked here rather than by certs.ClientConfig's want, to
	// tell a key mismatch (an operator matter) from a network failure.
	var mismatch atomic.Pointer[addressing.PublicKey]
	tlsConf := certs.ClientConfig(c.cert, ALPN, addressing.PublicKey{}, func(k addressing.PublicKey) error {
		if !want.IsZero() && k != want {
			mismatch.Store(&k)
			return ErrServerKey
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	qconf := &quic.Config{
		KeepAlivePeriod:       c.servers.keepAlive(),
		MaxIdleTimeout:        c.servers.idleTimeout(),
		HandshakeIdleTimeout:  handshakeIdle,
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: -1,
	}
	var qc *quic.Conn
	var err error
	if c.cfg.Dial != nil {
		qc, err = c.cfg.Dial(ctx, server, tlsConf, qconf)
	} else {
		qc, err = c.cfg.Transport.Dial(ctx, raddr, tlsConf, qconf)
	}
	if err != nil {
		if k := mismatch.Load(); k != nil {
			if pinned {
				return nil, fmt.Errorf("%w: %s presented key %s, but this node pinned %s when it first met its rendezvous "+
					"(one key per node, whatever the server's address); if the server's key changed on purpose, "+
					"configure the new key explicitly (ClientConfig.ServerKey; agentnet up --rendezvous-key %s)",
					ErrServerKey, name, k, want, k)
			}
			return nil, fmt.Errorf("%w: %s presented key %s, not the configured %s", ErrServerKey, name, k, want)
		}
		if c.cfg.Dial != nil {
			return nil, err // the dialer says what it tried
		}
		return nil, fmt.Errorf("rendezvous: dial %s: %w", name, err)
	}
	switch {
	case tofu:
		k, err := certs.PeerKey(qc.ConnectionState().TLS)
		if err == nil {
			err = c.cfg.Pins.SetPin(k)
		}
		if err != nil {
			qc.CloseWithError(0, "")
			return nil, fmt.Errorf("rendezvous: pin server key: %w", err)
		}
		c.log.Info("rendezvous server key pinned on first use", "server", name, "key", k.String())
	case !pinned && c.cfg.Pins != nil:
		// A configured key: it becomes the pin (the user's explicit change).
		if k, ok := c.cfg.Pins.Pin(); !ok || k != want {
			if err := c.cfg.Pins.SetPin(want); err != nil {
				qc.CloseWithError(0, "")
				return nil, fmt.Errorf("rendezvous: pin server key: %w", err)
			}
			c.log.Info("rendezvous server key pinned as configured", "server", name, "key", want.String(), "replaced", k.String())
		}
	}
	return qc, nil
}

// receive reads the frames the server pushes on the session stream: Deliver
// frames go to Deliver and are acked once accepted, Introduce frames go to
// Introduced, unknown types are skipped (a newer server). server is the
// address the connection dialled.
func (c *Client) receive(ctx context.Context, str *quic.Stream, w *sessionWriter, server netip.AddrPort) error {
	var buf []byte
	var lists listAssembler
	for {
		f, err := proto.ReadFrame(str, proto.MaxBody)
		if err != nil {
			return fmt.Errorf("rendezvous: session: %w", err)
		}
		switch f.Type {
		case proto.TypeDeliver:
		case proto.TypeIntroduce:
			m, err := proto.ParseIntroduce(f.Body)
			if err != nil {
				return fmt.Errorf("rendezvous: session: %w", err)
			}
			intro, err := introduction(&m, server)
			if err != nil || intro.Initiator {
				c.log.Warn("rendezvous: pushed introduction ignored", "key", m.Peer.String(), "err", err)
				continue
			}
			if c.cfg.Introduced != nil {
				c.cfg.Introduced(intro)
			}
			continue
		case proto.TypeNetworkState:
			m, err := proto.ParseNetworkState(f.Body)
			if err != nil {
				return fmt.Errorf("rendezvous: session: %w", err)
			}
			st, err := lists.add(&m)
			if err != nil {
				c.log.Warn("rendezvous: pushed network list dropped", "err", err)
			}
			if st != nil && c.cfg.Network != nil {
				c.cfg.Network(*st)
			}
			continue
		default:
			c.log.Debug("rendezvous: unknown pushed frame skipped", "type", f.Type.String())
			continue
		}
		d, err := proto.ParseDeliver(f.Body)
		if err != nil {
			return fmt.Errorf("rendezvous: session: %w", err)
		}
		if c.cfg.Deliver == nil {
			continue
		}
		if err := c.cfg.Deliver(c.ctx, d.Msg); err != nil {
			c.log.Warn("rendezvous: mailbox message not accepted; kept for redelivery", "mailbox_id", d.ID, "err", err)
			continue
		}
		buf, _ = proto.AppendMessage(buf[:0], &proto.Ack{ID: d.ID})
		if err := w.write(buf); err != nil {
			return fmt.Errorf("rendezvous: session: ack: %w", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// roundTrip sends req on a fresh stream of the registered connection and
// returns the answer; an Error answer becomes a *ServerError.
func (c *Client) roundTrip(ctx context.Context, req proto.Message) (proto.Message, error) {
	m, _, err := c.roundTripServer(ctx, req)
	return m, err
}

// roundTripServer is roundTrip that also returns the server address the
// connection it used dialled.
func (c *Client) roundTripServer(ctx context.Context, req proto.Message) (proto.Message, netip.AddrPort, error) {
	b, err := proto.AppendMessage(nil, req)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	b = proto.Pad(b, minRequestSize)
	qc, err := c.readyConn(ctx)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	server := remoteAddrPort(qc)
	str, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, server, fmt.Errorf("rendezvous: open stream: %w", err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(requestTimeout)
	}
	str.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() {
		str.CancelRead(streamCodeDone)
		str.CancelWrite(streamCodeDone)
	})
	defer stop()
	defer str.CancelRead(streamCodeDone)
	_, werr := str.Write(b)
	if werr == nil {
		str.Close()
	}
	// Read the answer even if the write failed: the server may have refused
	// the request early (too large) and said why.
	f, err := proto.ReadFrame(str, proto.MaxBody)
	if err != nil {
		if werr != nil {
			err = werr
		}
		return nil, server, c.requestErr(ctx, err)
	}
	m, err := proto.ParseMessage(f)
	if err != nil {
		return nil, server, fmt.Errorf("rendezvous: answer: %w", err)
	}
	if e, ok := m.(*proto.Error); ok {
		return nil, server, &ServerError{Code: e.Code, Text: e.Text}
	}
	return m, server, nil
}

func (c *Client) requestErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("rendezvous: request: %w", ctx.Err())
	}
	if c.ctx.Err() != nil {
		return fmt.Errorf("rendezvous: request: %w", net.ErrClosed)
	}
	return fmt.Errorf("rendezvous: request: %w", err)
}

// Lookup returns the record of the agent t names. It fails with ErrNotFound
// both when the agent does not exist and when it does not trust us: the
// server's answers are identical. When t is an address, the key answered is
// checked against it (addresses are self-certifying), so a lying server
// cannot substitute another key.
func (c *Client) Lookup(ctx context.Context, t addressing.Target) (PeerInfo, error) {
	m, err := c.roundTrip(ctx, &proto.Lookup{Target: t})
	if err != nil {
		return PeerInfo{}, fmt.Errorf("rendezvous: lookup %s: %w", t, err)
	}
	switch m := m.(type) {
	case *proto.NotFound:
		return PeerInfo{}, fmt.Errorf("rendezvous: lookup %s: %w", t, ErrNotFound)
	case *proto.LookupResult:
		if m.Addr.Node() != m.Key.NodeID() {
			return PeerInfo{}, fmt.Errorf("rendezvous: lookup %s: server answered address %s for a key whose address differs", t, m.Addr)
		}
		if a, ok := t.Addr(); ok && a.Node() != m.Key.NodeID() {
			return PeerInfo{}, fmt.Errorf("rendezvous: lookup %s: server answered a key that does not own the address", t)
		}
		if h, ok := t.Hostname(); ok && h != m.Hostname {
			return PeerInfo{}, fmt.Errorf("rendezvous: lookup %s: server answered hostname %q", t, m.Hostname)
		}
		return PeerInfo{Key: m.Key, Addr: m.Addr, Hostname: m.Hostname, Online: m.Online, Locators: m.Locators}, nil
	}
	return PeerInfo{}, fmt.Errorf("rendezvous: lookup %s: unexpected answer %s", t, m.FrameType())
}

// Connect asks the server to introduce us to target, a peer that trusts us,
// for hole punching. cands are our current candidates (reflexive from STUN,
// host addresses); invalid ones are skipped and only the first 8 are sent.
// The server merges them after the ones it knows. With relay, the server
// also opens a relay session for the pair, if it has a relay and room.
//
// The peer gets its introduction (same Token, our candidates, the other
// relay grant) pushed to its ClientConfig.Introduced. Connect fails with
// ErrNotFound when the peer does not exist, does not trust us or is
// offline: the server's answers are identical. The answered key is checked
// against target (addresses are self-certifying).
func (c *Client) Connect(ctx context.Context, target addressing.Addr, cands []netip.AddrPort, relay bool) (Introduce, error) {
	req := &proto.Connect{Target: target, Relay: relay}
	for _, ap := range cands {
		if ap.Addr().IsValid() && len(req.Candidates) < proto.MaxLocators {
			req.Candidates = append(req.Candidates, ap)
		}
	}
	m, server, err := c.roundTripServer(ctx, req)
	if err != nil {
		return Introduce{}, fmt.Errorf("rendezvous: connect %s: %w", target, err)
	}
	switch m := m.(type) {
	case *proto.NotFound:
		return Introduce{}, fmt.Errorf("rendezvous: connect %s: %w", target, ErrNotFound)
	case *proto.Introduce:
		intro, err := introduction(m, server)
		if err != nil {
			return Introduce{}, fmt.Errorf("rendezvous: connect %s: %w", target, err)
		}
		if m.Peer.NodeID() != target.Node() {
			return Introduce{}, fmt.Errorf("rendezvous: connect %s: server introduced a key that does not own the address", target)
		}
		if !intro.Initiator {
			return Introduce{}, fmt.Errorf("rendezvous: connect %s: answer is not the initiator's introduction", target)
		}
		return intro, nil
	}
	return Introduce{}, fmt.Errorf("rendezvous: connect %s: unexpected answer %s", target, m.FrameType())
}

// introduction checks an Introduce frame and resolves its relay address
// against server, the address the connection dialled.
func introduction(m *proto.Introduce, server netip.AddrPort) (Introduce, error) {
	if m.PeerAddr.Node() != m.Peer.NodeID() {
		return Introduce{}, errors.New("introduction names an address its key does not own")
	}
	intro := Introduce{
		Peer:       m.Peer,
		PeerAddr:   m.PeerAddr,
		Candidates: m.Candidates,
		Token:      m.Token,
		Initiator:  m.Initiator,
		PeerNAT:    natName(m.PeerNAT),
	}
	if g := m.Relay; g != nil {
		addr := resolveService(g.Addr, server)
		if !addr.IsValid() {
			return Introduce{}, errors.New("relay grant without a usable address")
		}
		intro.Relay = &RelayGrant{Addr: addr, Session: g.Session, Secret: g.Secret, Side: g.Side}
	}
	return intro, nil
}

// NAT kinds as ReportNAT takes them and Introduce.PeerNAT gives them.
var natNames = map[proto.NATKind]string{
	proto.NATUnknown: "unknown", proto.NATNone: "none", proto.NATEasy: "easy", proto.NATHard: "hard",
	proto.NATBlocked: "blocked",
}

func natName(k proto.NATKind) string {
	if s, ok := natNames[k]; ok {
		return s
	}
	return "unknown"
}

// ReportNAT tells the server our NAT kind ("none", "easy", "hard" or
// "unknown"), which it passes to the peers it introduces us to
// (Introduce.PeerNAT) until our session ends.
func (c *Client) ReportNAT(ctx context.Context, kind string) error {
	k := proto.NATUnknown
	for v, name := range natNames {
		if name == kind {
			k = v
		}
	}
	m, err := c.roundTrip(ctx, &proto.NATReport{Kind: k})
	if err != nil {
		return fmt.Errorf("rendezvous: report nat: %w", err)
	}
	if _, ok := m.(*proto.OK); !ok {
		return fmt.Errorf("rendezvous: report nat: unexpected answer %s", m.FrameType())
	}
	return nil
}

// Send relays a signed trust message (an encoded trustdb.Message) through
// the server. For a request the answer is the same whether the target
// exists or not. Errors: ErrBadMessage, ErrReplay, ErrNoRequest (permanent:
// drop the message), ErrRateLimited, ErrLimit (retry later).
func (c *Client) Send(ctx context.Context, msg []byte) error {
	m, err := c.roundTrip(ctx, &proto.TrustSend{Msg: msg})
	if err != nil {
		return fmt.Errorf("rendezvous: send trust message: %w", err)
	}
	if _, ok := m.(*proto.OK); !ok {
		return fmt.Errorf("rendezvous: send trust message: unexpected answer %s", m.FrameType())
	}
	return nil
}

// SetHostname claims name for the agent ("" releases its hostname). It fails
// with ErrHostnameTaken if another key holds it. The name is also claimed on
// later re-registrations.
func (c *Client) SetHostname(ctx context.Context, name string) error {
	if name != "" {
		if err := addressing.ValidateHostname(name); err != nil {
			return fmt.Errorf("rendezvous: set hostname: %w", err)
		}
	}
	m, err := c.roundTrip(ctx, &proto.SetHostname{Hostname: name})
	if err != nil {
		return fmt.Errorf("rendezvous: set hostname %q: %w", name, err)
	}
	if _, ok := m.(*proto.OK); !ok {
		return fmt.Errorf("rendezvous: set hostname: unexpected answer %s", m.FrameType())
	}
	c.mu.Lock()
	c.hostname = name
	c.mu.Unlock()
	return nil
}
