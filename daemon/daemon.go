package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/service"
	"github.com/agentnet/agentnet/service/event"
	"github.com/agentnet/agentnet/service/message"
	"github.com/agentnet/agentnet/trustdb"
)

// ErrInUse is wrapped by Run's error when another daemon has the state
// directory (it wraps trustdb.ErrInUse too).
var ErrInUse = trustdb.ErrInUse

// ErrRendezvous is wrapped by Run's error when the rendezvous cannot be set
// up at all (the embedded one cannot start; see also the up command's
// startup check of the configured one).
var ErrRendezvous = errors.New("daemon: rendezvous cannot be set up")

// ErrSocketInUse is wrapped by Run's error when another daemon answers on
// the control socket.
var ErrSocketInUse = errors.New("daemon: control socket in use")

// Daemon is one running node with its control API. Create it with New and
// call Run once.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}

	// Set by Run before ready is closed, read-only afterwards.
	ctx     context.Context // cancelled when shutdown begins
	store   *trustdb.Store
	node    *quicnode.Node
	rdv     *localRendezvous // nil unless zero-config
	rdvAddr string
	rdvMode string
	rdvTCP  string // the TCP fallback address ("" for none)
	inbox   *message.Inbox
	msgSrv  *message.Server
	bus     *event.Bus
	evSrv   *event.Server
	started time.Time
	sock    net.Listener
	api     *http.Server
	limits  message.Limits

	// work owns every goroutine and connection the API starts beyond the
	// HTTP server's own handler goroutines (bridges, forwards, services).
	work tracker

	mu       sync.Mutex
	ran      bool
	hostname string

	stopReq  chan struct{} // closed by POST /v1/shutdown
	stopOnce sync.Once
	metrics  metricsState // metrics.go
}

// New checks cfg and returns a Daemon. It does no I/O.
func New(cfg Config) (*Daemon, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.StateDir = cfg.stateDir()
	cfg.Socket = cfg.socket()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Daemon{
		cfg:      cfg,
		log:      log,
		ready:    make(chan struct{}),
		stopReq:  make(chan struct{}),
		hostname: cfg.Hostname,
		limits:   message.Limits{MaxMessage: cfg.MaxMessage, MaxFile: cfg.MaxFile},
	}, nil
}

// Ready is closed once Run serves the control API.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Socket returns the control socket's path.
func (d *Daemon) Socket() string { return d.cfg.Socket }

// StateDir returns the state directory.
func (d *Daemon) StateDir() string { return d.cfg.StateDir }

// Status returns what GET /v1/status answers. Call it after Ready.
func (d *Daemon) Status() ctl.Status { return d.status() }

// Run starts everything, serves until ctx ends (or a client asks with POST
// /v1/shutdown), then shuts down cleanly and returns. It returns an error if startup fails (another daemon on the same
// state directory: an error wrapping ErrInUse). Run may be called once.
func (d *Daemon) Run(ctx context.Context) (err error) {
	d.mu.Lock()
	if d.ran {
		d.mu.Unlock()
		return errors.New("daemon: Run called twice")
	}
	d.ran = true
	d.mu.Unlock()

	runCtx, cancel := context.WithCancel(context.Background())
	d.ctx = runCtx
	var cleanup []func()
	defer func() {
		cancel()
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()

	// 1. State directory and trust store (the lock against a second daemon).
	store, err := trustdb.Open(d.cfg.StateDir)
	if err != nil {
		if errors.Is(err, trustdb.ErrDamaged) {
			return err // a *trustdb.DamagedError: its Hint says how to restore
		}
		if errors.Is(err, trustdb.ErrInUse) {
			return fmt.Errorf("daemon: state directory %s is in use by another agentnet daemon (its control socket is %s; stop it first, or give this one another --state): %w",
				d.cfg.StateDir, d.cfg.Socket, err)
		}
		return fmt.Errorf("daemon: open state directory: %w", err)
	}
	d.store = store
	cleanup = append(cleanup, func() { store.Close() })

	// The inbox next (its damage, too, is found before anything starts);
	// after the store, whose lock keeps a second daemon from touching it.
	inboxDir := filepath.Join(d.cfg.StateDir, InboxName)
	inbox, err := message.OpenInbox(inboxDir, d.maxInbox())
	if errors.Is(err, message.ErrDamaged) {
		idx := filepath.Join(inboxDir, "index")
		return &StateError{Path: idx, Reason: "damaged entries: " + strings.TrimPrefix(err.Error(), message.ErrDamaged.Error()+": "+idx+": "), Err: err,
			Fix: "each entry named is a file in " + idx + ": fix it, or move it aside (its content stays in " +
				inboxDir + "/files or /messages); the daemon starts once every entry reads"}
	}
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.inbox = inbox

	// 2. Rendezvous.
	ncfg := quicnode.Config{
		Store:      store,
		ListenAddr: d.cfg.ListenAddr,
		Hostname:   d.cfg.Hostname,
		Logger:     d.log.With("component", "node"),
		// Echo is built into quicnode; the daemon decides whether it runs.
		DisableEcho: !d.cfg.enabled(ServiceEcho),
	}
	if d.cfg.RendezvousAddr != "" {
		d.rdvAddr, d.rdvMode = d.cfg.RendezvousAddr, "configured"
		addrs := d.cfg.rendezvousAddrs()
		ncfg.RendezvousAddr, ncfg.RendezvousAddrs, ncfg.RendezvousKey = addrs[0], addrs[1:], d.cfg.RendezvousKey
		d.rdvTCP = d.cfg.rendezvousTCP()
		ncfg.RendezvousTCP, ncfg.Proxy = d.rdvTCP, d.cfg.proxy()
	} else {
		d.rdv = &localRendezvous{addr: d.cfg.localRendezvous(), dir: d.cfg.rendezvousDir(), log: d.log.With("component", "rendezvous")}
		hosting, err := d.rdv.tryHost()
		if err != nil {
			// The address is free (nothing else hosts it) but we cannot
			// serve it: nothing would ever answer there.
			return fmt.Errorf("%w: %w", ErrRendezvous, err)
		}
		cleanup = append(cleanup, d.rdv.close)
		d.rdvAddr, d.rdvMode = d.rdv.addr, "local"
		if hosting {
			d.rdvMode = "embedded"
		}
		// Zero config: trust the local rendezvous on first use.
		ncfg.RendezvousAddr = d.rdv.addr
	}

	// 3. Node.
	node, err := quicnode.New(ncfg)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if err := node.Start(ctx); err != nil {
		return fmt.Errorf("daemon: start node: %w", err)
	}
	d.node = node
	cleanup = append(cleanup, func() { node.Close() })

	// 4. Services. The tracker closes their listeners and waits for their
	// goroutines before the node closes.
	cleanup = append(cleanup, d.work.shutdown)
	if err := d.startServices(); err != nil {
		return err
	}
	d.work.onShutdown(d.publishTrustEvents())
	if d.rdv != nil {
		d.work.goFunc(func() { d.rdv.watchLoop(runCtx, node) })
	}
	d.work.goFunc(func() { d.maintainLoop(runCtx) })

	// 5. Control API.
	if err := d.listenAPI(); err != nil {
		return err
	}
	cleanup = append(cleanup, d.stopAPI)
	stopMetrics, err := d.startMetrics()
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	cleanup = append(cleanup, stopMetrics)
	d.started = time.Now().UTC()
	d.work.goFunc(func() {
		if err := d.api.Serve(d.sock); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("control API stopped", "err", err)
		}
	})
	d.log.Info("daemon ready", "addr", node.Addr(), "socket", d.cfg.Socket, "server", d.rdvAddr, "mode", d.rdvMode)
	close(d.ready)

	select {
	case <-ctx.Done():
	case <-d.stopReq:
	}
	d.log.Info("daemon shutting down")
	return nil
}

// maintainPeriod is how often the daemon expires records of never-trusted
// peers and refreshes the trust store's last good copy.
var maintainPeriod = 10 * time.Minute

// maintainLoop keeps the trust store tidy while the daemon runs: expired
// records of peers never trusted go (trustdb.Prune), and the last good copy
// trust.db.bak follows the changes (trustdb.Backup, a no-op without one).
func (d *Daemon) maintainLoop(ctx context.Context) {
	t := time.NewTicker(maintainPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.store.Prune(); err != nil {
			d.log.Warn("trust store: prune failed", "err", err)
		}
		if err := d.store.Backup(); err != nil {
			d.log.Warn("trust store: backup failed", "err", err)
		}
	}
}

// startServices starts the built-in services the config enables (echo runs
// inside the node).
func (d *Daemon) startServices() error {
	d.bus = event.NewBus(d.node.Addr())
	d.work.onShutdown(d.bus.Close)
	if d.cfg.enabled(ServiceDiscard) {
		l, err := d.node.Listen(service.PortDiscard)
		if err != nil {
			return fmt.Errorf("daemon: discard service: %w", err)
		}
		d.work.addCloser(l)
		d.work.goFunc(func() { d.discardLoop(l) })
	}
	if d.cfg.enabled(ServiceMessages) {
		l, err := d.node.Listen(service.PortMessages)
		if err != nil {
			return fmt.Errorf("daemon: message service: %w", err)
		}
		d.msgSrv = &message.Server{
			Inbox:        d.inbox,
			Limits:       d.limits,
			HostnameFunc: d.peerHostname,
			ReceiveFunc:  d.announce,
			Logger:       d.log.With("component", "messages"),
		}
		d.work.onShutdown(func() { d.msgSrv.Close() })
		d.work.goFunc(func() { d.msgSrv.Serve(l) })
	}
	if d.cfg.enabled(ServiceEvents) {
		l, err := d.node.Listen(service.PortEvents)
		if err != nil {
			return fmt.Errorf("daemon: event service: %w", err)
		}
		d.evSrv = &event.Server{Bus: d.bus, Logger: d.log.With("component", "events")}
		d.work.onShutdown(func() { d.evSrv.Close() })
		d.work.goFunc(func() { d.evSrv.Serve(l) })
	}
	return nil
}

func (d *Daemon) maxInbox() int64 {
	if d.cfg.MaxInbox > 0 {
		return d.cfg.MaxInbox
	}
	return DefaultMaxInbox
}

// announce publishes an "inbox.received" event on our own bus for every
// item stored, so agents can subscribe instead of polling.
func (d *Daemon) announce(it message.Item) {
	data := fmt.Sprintf(`{"id":%q,"kind":%q,"from":%q,"name":%q,"bytes":%d}`, it.ID, it.KindName, it.From, it.Name, it.Bytes)
	d.bus.Publish("inbox.received", []byte(data), d.node.Addr())
}

// discardLoop serves the discard service: each stream is read to its end,
// then the byte count (8 bytes, big endian) is written back, so a sender
// knows everything arrived.
func (d *Daemon) discardLoop(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if !d.work.goFunc(func() {
			defer c.Close()
			done := d.work.addCloser(c)
			defer done()
			n, err := io.CopyBuffer(io.Discard, idleReader{c}, make([]byte, 64<<10))
			if err != nil {
				return
			}
			var b [8]byte
			for i := range 8 {
				b[i] = byte(uint64(n) >> (56 - 8*i))
			}
			c.Write(b[:])
			closeWrite(c)
		}) {
			c.Close()
			return
		}
	}
}

// idleReader fails a read that waits longer than a minute.
type idleReader struct{ c net.Conn }

func (r idleReader) Read(b []byte) (int, error) {
	r.c.SetReadDeadline(time.Now().Add(time.Minute))
	return r.c.Read(b)
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// listenAPI opens the control socket with mode 0600. A stale socket file
// (no daemon answers on it) is removed; a live one is an error.
func (d *Daemon) listenAPI() error {
	p := d.cfg.Socket
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("daemon: socket directory: %w", err)
	}
	if _, err := os.Lstat(p); err == nil {
		if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("%w: another daemon answers on %s: stop it or choose another --socket", ErrSocketInUse, p)
		}
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("daemon: remove stale socket: %w", err)
		}
	}
	l, err := listenPrivate(p)
	if err != nil {
		return fmt.Errorf("daemon: control socket: %w", err)
	}
	d.sock = l
	d.api = &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return d.ctx },
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// listenPrivate listens on a Unix socket at p that is never accessible to
// anyone but us: it is bound inside a fresh 0700 directory, set to 0600 and
// only then renamed into place. Closing the listener removes p.
func listenPrivate(p string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(p), ".agentnet-sock-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) >= maxSocketPath {
		// No room for the detour: bind in place (the state directory is
		// 0700, which covers the moment before the chmod).
		tmp = p
	}
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if tmp != p {
		if err := os.Rename(tmp, p); err != nil {
			l.Close()
			return nil, err
		}
	}
	ul.SetUnlinkOnClose(false)
	return &privateListener{UnixListener: ul, path: p}, nil
}

// privateListener removes its socket file on Close.
type privateListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *privateListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

// stopAPI ends every request: streaming handlers see their context end
// (it derives from d.ctx, cancelled first), the server shuts down.
func (d *Daemon) stopAPI() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.api.Shutdown(ctx); err != nil {
		d.api.Close()
	}
}

// tracker owns goroutines and closers: shutdown closes every closer, runs
// the shutdown hooks, and waits for every goroutine.
type tracker struct {
	mu      sync.Mutex
	closed  bool
	closers map[*closerEntry]struct{}
	hooks   []func()
	wg      sync.WaitGroup
}

type closerEntry struct{ c io.Closer }

// goFunc runs f in a goroutine the tracker waits for; false if shut down.
func (t *tracker) goFunc(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
	return true
}

// addCloser registers c to be closed on shutdown (at once if already shut
// down); the returned func unregisters it.
func (t *tracker) addCloser(c io.Closer) (remove func()) {
	e := &closerEntry{c}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.Close()
		return func() {}
	}
	if t.closers == nil {
		t.closers = make(map[*closerEntry]struct{})
	}
	t.closers[e] = struct{}{}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.closers, e)
		t.mu.Unlock()
	}
}

// onShutdown adds a hook run by shutdown, after the closers.
func (t *tracker) onShutdown(f func()) {
	t.mu.Lock()
	t.hooks = append(t.hooks, f)
	t.mu.Unlock()
}

func (t *tracker) shutdown() {
	t.mu.Lock()
	t.closed = true
	cs := make([]io.Closer, 0, len(t.closers))
	for e := range t.closers {
		cs = append(cs, e.c)
	}
	t.closers = nil
	hooks := t.hooks
	t.hooks = nil
	t.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	for _, h := range hooks {
		h()
	}
	t.wg.Wait()
}
