package paths

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/testutils/simnet"
	"github.com/stretchr/testify/require"
)

const testALPN = "agentnet-paths-test"

// testNet is an in-memory UDP network (quic-go's simnet) whose links can
// be cut: a filter drops packets between chosen pairs of addresses.
type testNet struct {
	// Latency is the one-way delay of every packet (zero: none).
	Latency time.Duration

	router simnet.PerfectRouter
	mu     sync.Mutex
	cut    map[[2]netip.AddrPort]bool
	tap    func(simnet.Packet) // sees every packet sent, cut or not
	nats   []*fakeNAT
}

// fakeNAT puts one host of a testNet behind a NAT with endpoint-independent
// mapping and address-and-port-dependent filtering (a home router): what
// the host sends leaves from pub; a packet to pub gets in only from an
// address the host has sent to from that pub; the host's own address is
// not reachable from outside. move gives it a new pub, as a rebinding (new
// port) or a renumbering (new address) does: the old mapping and its
// filter are gone.
type fakeNAT struct {
	inside netip.AddrPort
	mu     sync.Mutex
	pub    netip.AddrPort
	open   map[netip.AddrPort]bool
}

func (f *fakeNAT) public() netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pub
}

func (f *fakeNAT) move(to netip.AddrPort) {
	f.mu.Lock()
	f.pub, f.open = to, make(map[netip.AddrPort]bool)
	f.mu.Unlock()
}

// addNAT puts inside behind a NAT at pub whose filter already lets the
// remotes in (as an earlier punch would have).
func (n *testNet) addNAT(inside, pub string, remotes ...netip.AddrPort) *fakeNAT {
	f := &fakeNAT{inside: netip.MustParseAddrPort(inside), pub: netip.MustParseAddrPort(pub), open: make(map[netip.AddrPort]bool)}
	for _, r := range remotes {
		f.open[r] = true
	}
	n.mu.Lock()
	n.nats = append(n.nats, f)
	n.mu.Unlock()
	return f
}

// translate applies the NATs to p: it returns false if p is dropped.
func (n *testNet) translate(p *simnet.Packet) bool {
	n.mu.Lock()
	nats := n.nats
	n.mu.Unlock()
	from, to := p.From.(*net.UDPAddr).AddrPort(), p.To.(*net.UDPAddr).AddrPort()
	for _, f := range nats {
		f.mu.Lock()
		if from == f.inside {
			f.open[to] = true
			from = f.pub
		}
		f.mu.Unlock()
	}
	for _, f := range nats {
		f.mu.Lock()
		switch {
		case to == f.pub:
			if !f.open[from] {
				f.mu.Unlock()
				return false
			}
			to = f.inside
		case to == f.inside:
			f.mu.Unlock()
			return false
		}
		f.mu.Unlock()
	}
	p.From, p.To = net.UDPAddrFromAddrPort(from), net.UDPAddrFromAddrPort(to)
	return true
}

// setTap makes f see every packet sent from now on.
func (n *testNet) setTap(f func(simnet.Packet)) {
	n.mu.Lock()
	n.tap = f
	n.mu.Unlock()
}

// SendPacket implements simnet.Router, dropping cut pairs.
func (n *testNet) SendPacket(p simnet.Packet) error {
	from, to := p.From.(*net.UDPAddr).AddrPort(), p.To.(*net.UDPAddr).AddrPort()
	n.mu.Lock()
	drop := n.cut[[2]netip.AddrPort{from, to}]
	tap := n.tap
	n.mu.Unlock()
	if tap != nil {
		tap(p)
	}
	if drop || !n.translate(&p) {
		return nil
	}
	if n.Latency > 0 {
		time.AfterFunc(n.Latency, func() { n.router.SendPacket(p) })
		return nil
	}
	return n.router.SendPacket(p)
}

func (n *testNet) AddNode(addr net.Addr, c simnet.PacketReceiver) { n.router.AddNode(addr, c) }

// setCut cuts (or restores) both directions between a and b.
func (n *testNet) setCut(a, b net.Addr, cut bool) {
	x, y := a.(*net.UDPAddr).AddrPort(), b.(*net.UDPAddr).AddrPort()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cut == nil {
		n.cut = make(map[[2]netip.AddrPort]bool)
	}
	n.cut[[2]netip.AddrPort{x, y}] = cut
	n.cut[[2]netip.AddrPort{y, x}] = cut
}

func (n *testNet) listen(addr string) net.PacketConn {
	ua := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))
	c := simnet.NewSimConn(ua, n)
	n.AddNode(ua, c)
	return c
}

// testHost is a minimal Host: a trust set, TLS from internal/certs, and
// links served by an echo of every stream; control datagrams go to the
// manager.
type testHost struct {
	id   *trustdb.Identity
	cert tls.Certificate
	m    *Manager

	mu      sync.Mutex
	trusted map[addressing.PublicKey]bool
	served  int // links served so far
}

func newTestHost(t testing.TB) *testHost {
	id, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	cert, err := certs.Certificate(id.PrivateKey())
	require.NoError(t, err)
	return &testHost{id: id, cert: cert, trusted: make(map[addressing.PublicKey]bool)}
}

func (h *testHost) trust(k addressing.PublicKey, ok bool) {
	h.mu.Lock()
	h.trusted[k] = ok
	h.mu.Unlock()
}

func (h *testHost) gate(k addressing.PublicKey) error {
	if !h.Admissible(k) {
		return errors.New("not trusted")
	}
	return nil
}

func (h *testHost) ClientTLS(peer addressing.PublicKey) *tls.Config {
	return certs.ClientConfig(h.cert, testALPN, peer, h.gate)
}
func (h *testHost) ServerTLS() *tls.Config { return certs.ServerConfig(h.cert, testALPN, h.gate) }
func (h *testHost) Admissible(k addressing.PublicKey) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.trusted[k]
}
func (h *testHost) SendControl(l *Link, payload []byte) error { return l.Conn.SendDatagram(payload) }

func (h *testHost) ServeLink(l *Link) {
	h.mu.Lock()
	h.served++
	h.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx := l.Conn.Context()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			b, err := l.Conn.ReceiveDatagram(ctx)
			if err != nil {
				return
			}
			h.mu.Lock()
			m := h.m
			h.mu.Unlock()
			m.HandleControl(l, b)
		}
	}()
	for {
		s, err := l.Conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(s, s)
			s.Close()
		}()
	}
}

func testQUIC() *quic.Config {
	return &quic.Config{
		EnableDatagrams:      true,
		KeepAlivePeriod:      15 * time.Second,
		MaxIdleTimeout:       30 * time.Second,
		HandshakeIdleTimeout: 5 * time.Second,
	}
}

// newTestManager starts a manager on addr of net.
func newTestManager(t testing.TB, tn *testNet, addr string) (*Manager, *testHost) {
	t.Helper()
	h := newTestHost(t)
	return startTestManager(t, tn, addr, h), h
}

// startTestManager starts a manager for h on addr of net (h.m is set to
// it), with a stateless reset key derived from h's identity as nodes do.
func startTestManager(t testing.TB, tn *testNet, addr string, h *testHost) *Manager {
	t.Helper()
	key := quic.StatelessResetKey(sha256.Sum256(append([]byte("paths test reset\x00"), h.id.PrivateKey().Seed()...)))
	var log *slog.Logger
	if os.Getenv("PATHS_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", addr)
	}
	m, err := New(Config{Self: h.id.PublicKey(), Host: h, Conn: tn.listen(addr), QUIC: testQUIC(), StatelessResetKey: &key, Logger: log})
	require.NoError(t, err)
	h.mu.Lock()
	h.m = m
	h.mu.Unlock()
	require.NoError(t, m.Start())
	t.Cleanup(func() { m.Close(CodeClosing, "test done") })
	return m
}

// testWriter sends a test's manager logs to t.Log (PATHS_TEST_LOG=1).
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// crash closes m as a killed process would: nothing it sends on the way
// out (CONNECTION_CLOSE) reaches its peers at peerAddrs.
func crash(tn *testNet, m *Manager, peerAddrs ...net.Addr) {
	for _, p := range peerAddrs {
		tn.setCut(m.LocalAddr(), p, true)
	}
	m.Close(CodeClosing, "crash")
	for _, p := range peerAddrs {
		tn.setCut(m.LocalAddr(), p, false)
	}
}

// trustPair makes a and b admit each other.
func trustPair(a, b *testHost) {
	a.trust(b.id.PublicKey(), true)
	b.trust(a.id.PublicKey(), true)
}

// echo round-trips msg on a new stream of l.
func echo(ctx context.Context, l *Link, msg string) error {
	s, err := l.Conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	if _, err := s.Write([]byte(msg)); err != nil {
		return err
	}
	s.Close()
	got, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}
