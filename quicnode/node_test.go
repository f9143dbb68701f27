package quicnode

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// testServer is an in-process rendezvous whose state dir survives restarts.
type testServer struct {
	t    testing.TB
	dir  string
	addr string
	srv  *rendezvous.Server
}

func startServer(t testing.TB) *testServer {
	t.Helper()
	ts := &testServer{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	ts.start()
	t.Cleanup(func() { ts.srv.Close() })
	return ts
}

func (ts *testServer) start() {
	ts.t.Helper()
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{Addr: ts.addr, DataDir: ts.dir})
	require.NoError(ts.t, err)
	require.NoError(ts.t, srv.Start())
	ts.srv = srv
	ts.addr = srv.Addr().String()
}

func (ts *testServer) restart() {
	ts.t.Helper()
	require.NoError(ts.t, ts.srv.Close())
	ts.start()
}

// testNode is a node with its own state dir, restartable.
type testNode struct {
	t        testing.TB
	dir      string
	hostname string
	srv      *testServer
	store    *trustdb.Store
	*Node
}

func startNode(t testing.TB, srv *testServer, hostname string) *testNode {
	t.Helper()
	tn := &testNode{t: t, dir: t.TempDir(), hostname: hostname, srv: srv}
	tn.start()
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) start() {
	tn.t.Helper()
	st, err := trustdb.Open(tn.dir)
	require.NoError(tn.t, err)
	n, err := New(Config{
		Store:          st,
		RendezvousAddr: tn.srv.addr,
		RendezvousKey:  tn.srv.srv.PublicKey(),
		ListenAddr:     "127.0.0.1:0",
		Hostname:       tn.hostname,
	})
	require.NoError(tn.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tn.t, n.Start(ctx))
	require.NoError(tn.t, n.WaitRendezvous(ctx))
	tn.store, tn.Node = st, n
}

func (tn *testNode) stop() {
	if tn.Node == nil {
		return
	}
	tn.Node.Close()
	tn.store.Close()
	tn.Node = nil
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// establishTrust runs the whole consent flow: a asks b by target, b approves.
func establishTrust(t testing.TB, a, b *testNode, target string) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, a.RequestTrust(ctx, target, "hello"))
	require.Eventually(t, func() bool {
		for _, r := range b.PendingTrust() {
			if r.Key == a.PublicKey() {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "b never saw a's request")
	require.NoError(t, b.ApproveTrust(ctx, a.Addr().String()))
	require.Eventually(t, func() bool {
		return a.store.IsTrusted(b.PublicKey()) && b.store.IsTrusted(a.PublicKey())
	}, 5*time.Second, 10*time.Millisecond, "trust never became mutual")
}

// checkNoLeaks fails if goroutines started by the test outlive it.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var after int
		for i := 0; i < 100; i++ {
			after = runtime.NumGoroutine()
			if after <= before {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("goroutines leaked: %d before, %d after\n%s", before, after, buf)
	})
}

func TestDialBeforeTrustIsRefused(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "alice")
	b := startNode(t, srv, "bob")
	ln, err := b.Listen(80)
	require.NoError(t, err)
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()

	ctx := ctxT(t, 5*time.Second)
	for _, target := range []string{b.Addr().String(), "bob"} {
		_, err = a.Dial(ctx, target, 80)
		require.ErrorIs(t, err, ErrNotTrusted, target)
	}
	// One-sided consent is not enough: a asks, b has not approved.
	require.NoError(t, a.RequestTrust(ctx, "bob", "let me in"))
	_, err = a.Dial(ctx, b.Addr().String(), 80)
	require.ErrorIs(t, err, ErrNotTrusted)
	_, err = b.Dial(ctx, a.Addr().String(), 80)
	require.ErrorIs(t, err, ErrNotTrusted)

	select {
	case c := <-accepted:
		t.Fatalf("listener saw a connection from %v", c.RemoteAddr())
	case <-time.After(100 * time.Millisecond):
	}
	require.Empty(t, b.Peers())
	require.Empty(t, a.Peers())
	ln.Close()
}

// TestGateRefusesUntrustedHandshake drives the handshake by hand, so the
// remote gate (not the dialer's local check) is what refuses.
func TestGateRefusesUntrustedHandshake(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	ctx := ctxT(t, 5*time.Second)
	_, err := rawDial(ctx, a, b, nil)
	require.ErrorIs(t, err, ErrNotTrusted)
	require.Empty(t, b.Peers())
}

// rawDial handshakes from a's socket to b's with a's identity and waits for
// the welcome, bypassing a's own trust check.
func rawDial(ctx context.Context, a, b *testNode, cache tls.ClientSessionCache) (*quic.Conn, error) {
	tlsConf := certs.ClientConfig(a.cert, alpn, b.PublicKey(), nil)
	if name, err := a.knock.name(b.PublicKey()); err == nil {
		tlsConf.ServerName = name // knock as a's own dialer would
	}
	tlsConf.ClientSessionCache = cache
	conn, err := a.paths.Transport().Dial(ctx, b.LocalAddr(), tlsConf, a.qconf)
	if err != nil {
		return nil, classify(err)
	}
	if err := paths.AwaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(0, "")
		return nil, err
	}
	return conn, nil
}

func TestStreamsAndDatagramsOnManyPorts(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "alice")
	b := startNode(t, srv, "bob")
	establishTrust(t, a, b, "bob")
	ctx := ctxT(t, 20*time.Second)

	streamPorts := []uint16{80, 81, 82}
	dgramPorts := []uint16{5000, 5001}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for _, port := range streamPorts {
		ln, err := b.Listen(port)
		require.NoError(t, err)
		defer ln.Close()
		wg.Add(1)
		go func() { // server: answer "port N: <msg>" to each line
			defer wg.Done()
			c, err := ln.Accept()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg, err := io.ReadAll(c)
			if err != nil {
				errs <- err
				return
			}
			fmt.Fprintf(c, "port %d: %s", port, msg)
		}()
	}
	for _, port := range dgramPorts {
		pc, err := b.ListenPacket(port)
		require.NoError(t, err)
		defer pc.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			pc.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				errs <- err
				return
			}
			if _, err := pc.WriteTo(append([]byte(fmt.Sprintf("dgram %d: ", port)), buf[:n]...), from); err != nil {
				errs <- err
			}
		}()
	}
	for _, port := range streamPorts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := a.Dial(ctx, "bob", port)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			require.Equal(t, addressing.SockAddrFrom(b.Addr(), port), c.RemoteAddr())
			io.WriteString(c, "hi")
			c.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- err
				return
			}
			if want := fmt.Sprintf("port %d: hi", port); string(got) != want {
				errs <- fmt.Errorf("got %q, want %q", got, want)
			}
		}()
	}
	for _, port := range dgramPorts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc, err := a.ListenPacket(0)
			if err != nil {
				errs <- err
				return
			}
			defer pc.Close()
			to := addressing.SockAddrFrom(b.Addr(), port)
			buf := make([]byte, 2048)
			// Datagrams are unreliable: resend until answered.
			for i := 0; i < 50; i++ {
				if _, err := pc.WriteTo([]byte("ping"), to); err != nil {
					errs <- err
					return
				}
				pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					continue
				}
				if want := fmt.Sprintf("dgram %d: ping", port); string(buf[:n]) != want || from != to {
					errs <- fmt.Errorf("got %q from %v", buf[:n], from)
				}
				return
			}
			errs <- fmt.Errorf("no datagram answer on port %d", port)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// Everything shared one connection.
	require.Len(t, a.Peers(), 1)
	require.Len(t, b.Peers(), 1)
}

func TestBulkTransfer64MiB(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ln, err := b.Listen(9000)
	require.NoError(t, err)
	defer ln.Close()

	const size = 64 << 20
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		done <- r
	}()
	c, err := a.Dial(ctxT(t, 10*time.Second), b.Addr().String(), 9000)
	require.NoError(t, err)
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.Reader, size))
	require.NoError(t, err)
	require.NoError(t, c.(interface{ CloseWrite() error }).CloseWrite())
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, int64(size), r.n)
	require.Equal(t, h.Sum(nil), r.sum[:])
	c.Close()
}

func TestPortClosedAndDatagramLimits(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ctx := ctxT(t, 10*time.Second)
	// The first dial pipelines if the link is fresh (the refusal is then
	// the first Read's), and waits for the answer if not; the next one
	// waits, since the port refused.
	c, err := a.Dial(ctx, b.Addr().String(), 4242)
	if err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	require.ErrorIs(t, err, ErrPortClosed)
	_, err = a.Dial(ctx, b.Addr().String(), 4242)
	require.ErrorIs(t, err, ErrPortClosed)

	// The echo service answers on port 7, streams and datagrams.
	c, err = a.Dial(ctx, b.Addr().String(), PortEcho)
	require.NoError(t, err)
	_, err = c.Write([]byte("echo me"))
	require.NoError(t, err)
	got := make([]byte, 7)
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, "echo me", string(got))
	c.Close()

	pc, err := a.ListenPacket(0)
	require.NoError(t, err)
	defer pc.Close()
	_, err = pc.WriteTo(make([]byte, MaxDatagramPayload+1), addressing.SockAddrFrom(b.Addr(), PortEcho))
	require.ErrorIs(t, err, ErrDatagramTooLarge)
	big := bytes.Repeat([]byte{'x'}, MaxDatagramPayload)
	_, err = pc.WriteTo(big, addressing.SockAddrFrom(b.Addr(), PortEcho))
	require.NoError(t, err)
	buf := make([]byte, 2048)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	require.NoError(t, err)
	require.Equal(t, big, buf[:n])

	_, err = a.Listen(80)
	require.NoError(t, err)
	_, err = a.Listen(80)
	require.ErrorIs(t, err, ErrPortInUse)
}

func TestRevocationCutsLiveStreams(t *testing.T) {
	for _, revoker := range []string{"dialer", "acceptor"} {
		t.Run(revoker, func(t *testing.T) {
			checkNoLeaks(t)
			srv := startServer(t)
			a := startNode(t, srv, "alice")
			b := startNode(t, srv, "bob")
			establishTrust(t, a, b, "bob")
			ln, err := b.Listen(80)
			require.NoError(t, err)
			defer ln.Close()
			ctx := ctxT(t, 10*time.Second)
			ca, err := a.Dial(ctx, "bob", 80)
			require.NoError(t, err)
			defer ca.Close()
			cb, err := ln.Accept()
			require.NoError(t, err)
			defer cb.Close()
			_, err = ca.Write([]byte("x"))
			require.NoError(t, err)
			one := make([]byte, 1)
			_, err = io.ReadFull(cb, one)
			require.NoError(t, err)

			// Both ends block in Read; the revocation must wake them.
			readErr := func(c net.Conn) chan error {
				ch := make(chan error, 1)
				go func() {
					_, err := c.Read(make([]byte, 1))
					ch <- err
				}()
				return ch
			}
			ea, eb := readErr(ca), readErr(cb)
			if revoker == "dialer" {
				require.NoError(t, a.RevokeTrust(ctx, b.Addr().String()))
			} else {
				require.NoError(t, b.RevokeTrust(ctx, a.Addr().String()))
			}
			for _, ch := range []chan error{ea, eb} {
				select {
				case err := <-ch:
					require.Error(t, err)
				case <-time.After(3 * time.Second):
					t.Fatal("read not cut by revocation")
				}
			}
			_, err = ca.Write([]byte("y"))
			require.Error(t, err)

			// New dials fail from either side, once the revocation has
			// reached the other side (it travels through the rendezvous).
			require.Eventually(t, func() bool {
				_, e1 := a.Dial(ctx, b.Addr().String(), 80)
				_, e2 := b.Dial(ctx, a.Addr().String(), 80)
				return errors.Is(e1, ErrNotTrusted) && errors.Is(e2, ErrNotTrusted)
			}, 5*time.Second, 20*time.Millisecond)
			require.Eventually(t, func() bool {
				return !a.store.IsTrusted(b.PublicKey()) && !b.store.IsTrusted(a.PublicKey())
			}, 5*time.Second, 20*time.Millisecond)
		})
	}
}

// TestNoResumptionAfterRevoke is the regression test for the
// VerifyPeerCertificate bypass: a client that kept a session cache from a
// trusted connection must not get back in after revocation.
func TestNoResumptionAfterRevoke(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ctx := ctxT(t, 10*time.Second)
	cache := tls.NewLRUClientSessionCache(8)
	conn, err := rawDial(ctx, a, b, cache)
	require.NoError(t, err)
	require.False(t, conn.ConnectionState().TLS.DidResume)
	conn.CloseWithError(0, "")

	require.NoError(t, b.RevokeTrust(ctx, a.Addr().String()))
	_, err = rawDial(ctx, a, b, cache)
	require.ErrorIs(t, err, ErrNotTrusted)
	// And with a fresh handshake too.
	_, err = rawDial(ctx, a, b, nil)
	require.ErrorIs(t, err, ErrNotTrusted)
}

func TestHTTPOverOverlay(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "client")
	b := startNode(t, srv, "web")
	establishTrust(t, a, b, "web")
	ln, err := b.Listen(80)
	require.NoError(t, err)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%s %s %d %x", r.Method, r.URL.Path, n, h.Sum(nil))
	})}
	go hs.Serve(ln)
	defer hs.Close()

	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		return a.Dial(ctx, host, 80)
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := client.Get("http://web/hello")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, strings.HasPrefix(string(body), "GET /hello 0 "), string(body))

	payload := make([]byte, 10<<20)
	rand.Read(payload)
	sum := sha256.Sum256(payload)
	resp, err = client.Post("http://web/upload", "application/octet-stream", bytes.NewReader(payload))
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, fmt.Sprintf("POST /upload %d %x", len(payload), sum), string(body))
}

func TestTrustRequestByHostnameRevealsNothing(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "asker")
	b := startNode(t, srv, "private")
	ctx := ctxT(t, 10*time.Second)
	// A stranger learns nothing by lookup.
	_, err := a.rdv.Lookup(ctx, mustTarget("private"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	_, err = a.rdv.Lookup(ctx, addressing.TargetAddr(b.Addr()))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	// The request succeeds exactly as one to a name that does not exist.
	require.NoError(t, a.RequestTrust(ctx, "private", "hi"))
	require.NoError(t, a.RequestTrust(ctx, "nobody-here", "hi"))
	require.Eventually(t, func() bool { return len(b.PendingTrust()) == 1 }, 5*time.Second, 10*time.Millisecond)
	// Until b approves, a still knows nothing of where b is.
	_, err = a.rdv.Lookup(ctx, mustTarget("private"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	require.Empty(t, a.Peers())
	require.NoError(t, b.ApproveTrust(ctx, a.Addr().String()))
	require.Eventually(t, func() bool { return a.store.IsTrusted(b.PublicKey()) }, 5*time.Second, 10*time.Millisecond)
	info, err := a.rdv.Lookup(ctx, mustTarget("private"))
	require.NoError(t, err)
	require.Equal(t, b.PublicKey(), info.Key)
	c, err := a.Dial(ctx, "private", PortEcho)
	require.NoError(t, err)
	c.Close()
}

func mustTarget(s string) addressing.Target {
	t, err := addressing.ParseTarget(s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestRestarts(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "alice")
	b := startNode(t, srv, "bob")
	c := startNode(t, srv, "carol")
	establishTrust(t, a, b, "bob")
	ctx := ctxT(t, 30*time.Second)

	// Agent restart keeps identity and address.
	addrA := a.Addr()
	a.stop()
	a.start()
	require.Equal(t, addrA, a.Addr())

	// A request queued for an offline agent survives a rendezvous restart.
	c.stop()
	require.NoError(t, a.RequestTrust(ctx, "carol", "while you were away"))
	srv.restart()
	require.NoError(t, a.WaitRendezvous(ctx))
	require.NoError(t, b.WaitRendezvous(ctx))
	c.start()
	require.Eventually(t, func() bool { return len(c.PendingTrust()) == 1 }, 10*time.Second, 20*time.Millisecond)

	// Registrations and the trusted pair survived: a finds b by hostname.
	require.Eventually(t, func() bool {
		conn, err := a.Dial(ctx, "bob", PortEcho)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}, 10*time.Second, 50*time.Millisecond)
}

func TestCloseIsIdempotentAndFinal(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	require.NoError(t, a.Node.Close())
	require.NoError(t, a.Node.Close())
	_, err := a.Node.Listen(80)
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = a.Node.ListenPacket(0)
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestKnockRefusesEarlyAndIsBound checks the pre-handshake filter: a
// stranger is refused before key exchange (counted), and a knock copied
// from a trusted pair does not let another key in.
func TestKnockRefusesEarlyAndIsBound(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	c := startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ctx := ctxT(t, 10*time.Second)

	before := b.Stats().KnocksRefused
	_, err := rawDial(ctx, c, b, nil) // c knocks with its own (untrusted) pair secret
	require.ErrorIs(t, err, ErrNotTrusted)
	require.Greater(t, b.Stats().KnocksRefused, before, "the stranger was refused at the knock")

	// The stranger never sees b's certificate: the refusal comes before it.
	sawCert := false
	tlsConf := certs.ClientConfig(c.cert, alpn, addressing.PublicKey{}, func(addressing.PublicKey) error {
		sawCert = true
		return nil
	})
	_, err = c.paths.Transport().Dial(ctx, b.LocalAddr(), tlsConf, c.qconf)
	require.ErrorIs(t, classify(err), ErrNotTrusted)
	require.False(t, sawCert, "a stranger learnt b's key")

	// Now b trusts c too; c replaying a's knock name with its own
	// certificate still gets nowhere: the knock is bound to a's key.
	establishTrust(t, c, b, b.Addr().String())
	conn, err := rawDial(ctx, c, b, nil)
	require.NoError(t, err, "c's own knock works once trusted")
	conn.CloseWithError(0, "")
	stolen, err := a.knock.name(b.PublicKey())
	require.NoError(t, err)
	tlsConf = certs.ClientConfig(c.cert, alpn, b.PublicKey(), nil)
	tlsConf.ServerName = stolen
	conn, err = c.paths.Transport().Dial(ctx, b.LocalAddr(), tlsConf, c.qconf)
	if err == nil {
		err = paths.AwaitWelcome(ctx, conn)
	}
	require.ErrorIs(t, classify(err), ErrNotTrusted)
}
