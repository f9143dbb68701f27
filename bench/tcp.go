package bench

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
)

// tcpEnv is plain TCP or, with tls set, TLS 1.3 over TCP with the same
// certificates and gate as the QUIC systems (client certificate required and
// checked in VerifyConnection, X25519 only, no session tickets). A stream is a
// connection: Dial connects and Close closes. There are no datagrams.
type tcpEnv struct {
	sys     System
	srvID   identity
	trusted keySet
	ln      net.Listener
	srvTLS  *tls.Config
	client  *tcpPeer

	streams chan net.Conn
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

// NewTCPEnv starts the TCP baseline, or the TLS 1.3 over TCP one.
func NewTCPEnv(ctx context.Context, useTLS bool) (Env, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &tcpEnv{
		sys:     TCP,
		ln:      ln,
		streams: make(chan net.Conn, 1024),
		done:    make(chan struct{}),
	}
	if useTLS {
		e.sys = TLS
		if e.srvID, err = newIdentity(); err != nil {
			ln.Close()
			return nil, err
		}
		e.srvTLS = serverTLS(e.srvID.cert, benchALPN, e.trusted.allow)
	}
	p, err := e.newPeer()
	if err != nil {
		ln.Close()
		return nil, err
	}
	e.client = p
	e.wg.Add(1)
	go e.acceptLoop()
	return e, nil
}

func (e *tcpEnv) System() System { return e.sys }

func (e *tcpEnv) acceptLoop() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		if e.srvTLS == nil {
			e.deliver(c)
			continue
		}
		// Complete the handshake (and the gate) before the stream counts
		// as accepted, as a QUIC listener does.
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			tc := tls.Server(c, e.srvTLS)
			if err := tc.Handshake(); err != nil {
				c.Close()
				return
			}
			e.deliver(tc)
		}()
	}
}

func (e *tcpEnv) deliver(c net.Conn) {
	select {
	case e.streams <- c:
	case <-e.done:
		c.Close()
	}
}

func (e *tcpEnv) Accept() (net.Conn, error) {
	select {
	case c := <-e.streams:
		return c, nil
	case <-e.done:
		return nil, net.ErrClosed
	}
}

func (e *tcpEnv) Dial(ctx context.Context) (net.Conn, error) { return e.client.Dial(ctx) }

func (e *tcpEnv) Datagrams(context.Context) (net.PacketConn, net.PacketConn, net.Addr, error) {
	return nil, nil, nil, notSupported("no datagrams")
}

func (e *tcpEnv) NewPeer(context.Context) (Peer, error) { return e.newPeer() }

func (e *tcpEnv) newPeer() (*tcpPeer, error) {
	p := &tcpPeer{env: e}
	if e.srvTLS != nil {
		id, err := newIdentity()
		if err != nil {
			return nil, err
		}
		p.key = id
		p.tlsConf = clientTLS(id.cert, benchALPN, e.srvID.key)
		e.trusted.add(id.key)
	}
	return p, nil
}

func (e *tcpEnv) Close() error {
	e.once.Do(func() {
		close(e.done)
		e.ln.Close()
		e.wg.Wait()
		for {
			select {
			case c := <-e.streams:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

// tcpPeer is a TCP or TLS client; every Dial is a new connection.
type tcpPeer struct {
	env     *tcpEnv
	key     identity
	tlsConf *tls.Config
}

func (p *tcpPeer) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.env.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	if p.tlsConf == nil {
		return c, nil
	}
	tc := tls.Client(c, p.tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// Disconnect has nothing to do: TCP keeps no connection between streams.
func (p *tcpPeer) Disconnect() error { return nil }

func (p *tcpPeer) Close() error {
	if p.tlsConf != nil {
		p.env.trusted.remove(p.key.key)
	}
	return nil
}
