package tunnel

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/agentnet/agentnet/addressing"
)

// Client timing.
const (
	DefaultConnectTimeout = 10 * time.Second
	minBackoff            = 100 * time.Millisecond
	maxBackoff            = 2 * time.Second
	tcpKeepAlive          = 15 * time.Second
	clientQueue           = 1024 // datagrams waiting to be sent, and QUIC packets waiting to be read
)

// ErrTLS is wrapped by connection errors whose TLS handshake failed the
// server check: the certificate is neither the pinned rendezvous key nor
// valid for the host — typically a proxy or middlebox that intercepts TLS.
var ErrTLS = errors.New("the server's TLS certificate is neither the pinned rendezvous key nor valid for its host (a proxy or middlebox may be intercepting TLS)")

// ClientConfig configures a Client.
type ClientConfig struct {
	// Addr is the rendezvous's TCP address, "host:port". Required.
	Addr string
	// ServerKey returns the pinned rendezvous key, zero if none is pinned
	// yet. A server certificate whose key is that key is accepted; any
	// other must chain to RootCAs (nil: the system's) and name the host.
	// With no pin yet, a self-signed Ed25519 certificate is accepted: the
	// QUIC connection inside pins the key on first use, as over UDP.
	ServerKey func() addressing.PublicKey
	RootCAs   *x509.CertPool
	Proxy     ProxyConfig
	// DialContext opens TCP connections (default: a net.Dialer with TCP
	// keepalives), for example from inside a network namespace.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// ConnectTimeout bounds one connection attempt: TCP, proxy, TLS and
	// the WebSocket upgrade (default DefaultConnectTimeout).
	ConnectTimeout time.Duration
	// RelayIn receives every relay frame that arrives (from the reader
	// goroutine; it must not block or keep frame).
	RelayIn func(frame []byte)
	// OnUp is called (from the connect goroutine) each time a connection
	// comes up, after the first too: relay sessions must bind again.
	OnUp   func()
	Logger *slog.Logger
}

// State is a Client's connection state.
type State struct {
	Up    bool
	Since time.Time // of the last change
	Via   string    // "direct" or the proxy (password redacted)
	Err   error     // why the last attempt failed, or the connection ended; nil while up
}

// Client keeps one tunnel to the rendezvous up, redialling with backoff.
// Create it with NewClient, Start it, and Close it. Its methods are safe
// for concurrent use.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	quic *clientPacketConn
	out  chan []byte // encoded frames to send

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	started bool
	state   State
	changed chan struct{}
	attempt int // finished connection attempts (for WaitUp)

	up      atomic.Bool
	dropped atomic.Uint64
}

// NewClient checks cfg and returns a Client. It does no I/O.
func NewClient(cfg ClientConfig) (*Client, error) {
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("tunnel: address %q: %w", cfg.Addr, err)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.DialContext == nil {
		d := &net.Dialer{KeepAlive: tcpKeepAlive}
		cfg.DialContext = d.DialContext
	}
	if cfg.ServerKey == nil {
		cfg.ServerKey = func() addressing.PublicKey { return addressing.PublicKey{} }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, log: log, out: make(chan []byte, clientQueue), ctx: ctx, cancel: cancel, changed: make(chan struct{})}
	c.quic = &clientPacketConn{c: c, in: make(chan []byte, clientQueue), closed: make(chan struct{})}
	c.quic.readDL.init()
	return c, nil
}

// ServerAddr is the address the QUIC PacketConn gives the rendezvous
// (dial it there): packets go into the tunnel whatever the address.
var ServerAddr = net.UDPAddrFromAddrPort(Addr(0))

// QUIC returns the net.PacketConn that carries QUIC packets to and from
// the rendezvous's control service, for a quic.Transport.
func (c *Client) QUIC() net.PacketConn { return c.quic }

// WriteRelay sends a relay frame; false means it was dropped (the tunnel
// is down or its queue is full), as a UDP packet may be.
func (c *Client) WriteRelay(frame []byte) bool { return c.send(KindRelay, frame) }

func (c *Client) send(kind byte, p []byte) bool {
	if len(p) > MaxPayload || !c.up.Load() {
		c.dropped.Add(1)
		return false
	}
	f := AppendFrame(getBuf(FrameLen(len(p))), kind, p)
	select {
	case c.out <- f:
		return true
	default:
		putBuf(f)
		c.dropped.Add(1)
		return false
	}
}

// Dropped counts datagrams dropped because the tunnel was down or full.
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// State returns the connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

func (c *Client) setState(st State) {
	c.mu.Lock()
	st.Since = time.Now()
	c.state = st
	c.up.Store(st.Up)
	if !st.Up {
		c.attempt++
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// WaitUp waits until the tunnel is up, or until the attempt running (or
// the next one) fails: then it returns that attempt's error.
func (c *Client) WaitUp(ctx context.Context) error {
	c.mu.Lock()
	start := c.attempt
	c.mu.Unlock()
	for {
		c.mu.Lock()
		st, attempt, ch := c.state, c.attempt, c.changed
		c.mu.Unlock()
		switch {
		case st.Up:
			return nil
		case attempt > start && st.Err != nil:
			return st.Err
		case c.ctx.Err() != nil:
			return fmt.Errorf("tunnel: %w", net.ErrClosed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Start runs the connect loop in the background. Later calls do nothing.
func (c *Client) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started || c.ctx.Err() != nil {
		return
	}
	c.started = true
	c.wg.Add(1)
	go c.loop()
}

// Close ends the tunnel and waits for the client's goroutines.
func (c *Client) Close() error {
	c.cancel()
	c.up.Store(false)
	c.wg.Wait()
	c.quic.Close()
	return nil
}

func (c *Client) loop() {
	defer c.wg.Done()
	backoff := minBackoff
	for c.ctx.Err() == nil {
		ws, via, err := c.connect(c.ctx)
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			c.log.Debug("tunnel connect failed", "addr", c.cfg.Addr, "err", err)
			c.setState(State{Via: via, Err: err})
			t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		c.setState(State{Up: true, Via: via})
		c.log.Info("tunnel up", "addr", c.cfg.Addr, "via", via)
		if c.cfg.OnUp != nil {
			c.cfg.OnUp()
		}
		err = c.serve(ws)
		c.setState(State{Via: via, Err: fmt.Errorf("tunnel: connection to %s ended: %w", c.cfg.Addr, err)})
		c.log.Info("tunnel down", "addr", c.cfg.Addr, "err", err)
		// Frames queued for the dead connection are stale.
		for len(c.out) > 0 {
			putBuf(<-c.out)
		}
	}
}

// connect makes one connection: TCP (through the proxy if any), TLS,
// WebSocket. After a 407 or a failure through a proxy command, the command
// runs again and the connection is retried once.
func (c *Client) connect(ctx context.Context) (*websocket.Conn, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	ws, via, err := c.connectOnce(ctx)
	if err != nil && c.cfg.Proxy.URL == nil && c.cfg.Proxy.Cmd != "" && ctx.Err() == nil && !errors.Is(err, ErrProxyCmd) {
		c.log.Info("tunnel: retrying with a fresh proxy URL", "err", err)
		ws, via, err = c.connectOnce(ctx)
	}
	return ws, via, err
}

func (c *Client) connectOnce(ctx context.Context) (*websocket.Conn, string, error) {
	proxy, err := c.cfg.Proxy.proxyFor(ctx, c.cfg.Addr)
	if err != nil {
		return nil, "proxy command", err
	}
	via := "direct"
	dialAddr := c.cfg.Addr
	if proxy != nil {
		via = "proxy " + Redacted(proxy)
		dialAddr = proxy.Host
	}
	raw, err := c.cfg.DialContext(ctx, "tcp", dialAddr)
	if err != nil {
		if proxy != nil {
			return nil, via, fmt.Errorf("tunnel: connect to proxy %s: %w", Redacted(proxy), err)
		}
		return nil, via, fmt.Errorf("tunnel: connect to %s: %w", c.cfg.Addr, err)
	}
	conn := raw
	if proxy != nil {
		if conn, err = connectVia(ctx, raw, proxy, c.cfg.Addr); err != nil {
			raw.Close()
			return nil, via, err
		}
	}
	host, _, _ := net.SplitHostPort(c.cfg.Addr)
	tc := tls.Client(conn, c.tlsConfig(host))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		if errors.Is(err, ErrTLS) {
			return nil, via, fmt.Errorf("tunnel: TLS to %s (%s): %w", c.cfg.Addr, via, ErrTLS)
		}
		return nil, via, fmt.Errorf("tunnel: TLS to %s (%s): %w", c.cfg.Addr, via, err)
	}
	used := false
	hc := &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
			if used {
				return nil, errors.New("tunnel: one connection only")
			}
			used = true
			return tc, nil
		},
	}}
	ws, resp, err := websocket.Dial(ctx, (&url.URL{Scheme: "https", Host: c.cfg.Addr, Path: Path}).String(), &websocket.DialOptions{
		HTTPClient:   hc,
		Subprotocols: []string{Subprotocol},
	})
	if err != nil {
		raw.Close()
		if resp != nil {
			return nil, via, fmt.Errorf("tunnel: upgrade at %s (%s): HTTP %s: %w", c.cfg.Addr, via, resp.Status, err)
		}
		return nil, via, fmt.Errorf("tunnel: upgrade at %s (%s): %w", c.cfg.Addr, via, err)
	}
	if ws.Subprotocol() != Subprotocol {
		ws.CloseNow()
		return nil, via, fmt.Errorf("tunnel: %s does not speak %s", c.cfg.Addr, Subprotocol)
	}
	ws.SetReadLimit(MaxMessage)
	return ws, via, nil
}

func (c *Client) tlsConfig(host string) *tls.Config {
	return &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: true, // VerifyConnection decides
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return ErrTLS
			}
			leaf := cs.PeerCertificates[0]
			pinned := c.cfg.ServerKey()
			if k, ok := leaf.PublicKey.(ed25519.PublicKey); ok {
				if !pinned.IsZero() && string(k) == string(pinned[:]) {
					return nil
				}
				if pinned.IsZero() && leaf.CheckSignatureFrom(leaf) == nil {
					return nil // trust on first use: the QUIC inside pins the key
				}
			}
			opts := x509.VerifyOptions{Roots: c.cfg.RootCAs, DNSName: host, Intermediates: x509.NewCertPool()}
			for _, ic := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(ic)
			}
			if _, err := leaf.Verify(opts); err != nil {
				return ErrTLS
			}
			return nil
		},
	}
}

// serve runs one connection until it fails.
func (c *Client) serve(ws *websocket.Conn) error {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	errc := make(chan error, 3)
	var loops sync.WaitGroup
	loops.Add(3)
	go func() { defer loops.Done(); errc <- c.readLoop(ctx, ws) }()
	go func() { defer loops.Done(); errc <- c.writeLoop(ctx, ws) }()
	go func() {
		defer loops.Done()
		keepalive(ctx, ws, func() { errc <- errors.New("ping unanswered") })
		errc <- nil
	}()
	err := <-errc
	ws.CloseNow()
	cancel()
	loops.Wait()
	if err == nil {
		err = c.ctx.Err()
	}
	return err
}

func (c *Client) readLoop(ctx context.Context, ws *websocket.Conn) error {
	buf := make([]byte, MaxMessage)
	for {
		msg, err := readMessage(ctx, ws, buf)
		if err != nil {
			return err
		}
		for len(msg) > 0 {
			kind, p, rest, err := NextFrame(msg)
			if err != nil {
				return err
			}
			msg = rest
			switch kind {
			case KindQUIC:
				c.quic.deliver(p)
			case KindRelay:
				if c.cfg.RelayIn != nil {
					c.cfg.RelayIn(p)
				}
			}
		}
	}
}

func (c *Client) writeLoop(ctx context.Context, ws *websocket.Conn) error {
	batch := make([]byte, 0, MaxMessage)
	for {
		var f []byte
		select {
		case f = <-c.out:
		case <-ctx.Done():
			return ctx.Err()
		}
		batch = packBatch(batch[:0], f, c.out)
		if err := writeMessage(ctx, ws, batch); err != nil {
			return err
		}
	}
}

// clientPacketConn carries the QUIC packets.
type clientPacketConn struct {
	c      *Client
	in     chan []byte
	once   sync.Once
	closed chan struct{}
	readDL deadline
}

func (q *clientPacketConn) deliver(p []byte) {
	b := append(getBuf(len(p)), p...)
	select {
	case q.in <- b:
	default:
		putBuf(b)
		q.c.dropped.Add(1)
	}
}

func (q *clientPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case b := <-q.in:
		n := copy(p, b)
		putBuf(b)
		return n, ServerAddr, nil
	case <-q.closed:
		return 0, nil, net.ErrClosed
	case <-q.readDL.wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (q *clientPacketConn) WriteTo(p []byte, _ net.Addr) (int, error) {
	select {
	case <-q.closed:
		return 0, net.ErrClosed
	default:
	}
	q.c.send(KindQUIC, p) // dropped while down, as UDP would
	return len(p), nil
}

func (q *clientPacketConn) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

func (q *clientPacketConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4zero, Port: 0}
}
func (q *clientPacketConn) SetDeadline(t time.Time) error     { q.readDL.set(t); return nil }
func (q *clientPacketConn) SetReadDeadline(t time.Time) error { q.readDL.set(t); return nil }
func (q *clientPacketConn) SetWriteDeadline(time.Time) error  { return nil }

// SetReadBuffer and SetWriteBuffer do nothing: the packets wait in the
// conn's bounded queue and the tunnel's, there is no socket buffer to
// size. They spare the log quic-go writes for a conn without them.
func (q *clientPacketConn) SetReadBuffer(int) error  { return nil }
func (q *clientPacketConn) SetWriteBuffer(int) error { return nil }
