package relay

import (
	"bytes"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/relayframe"
)

// checkGoroutines fails the test if the number of goroutines does not
// settle back after every cleanup of the test has run.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func listen(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func newRelay(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Conn == nil {
		cfg.Conn = listen(t)
	}
	s, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, s.Start())
	t.Cleanup(func() { s.Close() })
	return s
}

func key(b byte) addressing.PublicKey {
	var k addressing.PublicKey
	k[0] = b
	return k
}

// endpoint is a raw UDP agent talking to the relay.
type endpoint struct {
	t     testing.TB
	conn  *net.UDPConn
	relay netip.AddrPort
}

func newEndpoint(t testing.TB, s *Server) *endpoint {
	return &endpoint{t: t, conn: listen(t), relay: s.Addr()}
}

func (e *endpoint) send(b []byte) {
	e.t.Helper()
	_, err := e.conn.WriteToUDPAddrPort(b, e.relay)
	require.NoError(e.t, err)
}

func (e *endpoint) recv() []byte {
	e.t.Helper()
	buf := make([]byte, 2048)
	e.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := e.conn.ReadFromUDPAddrPort(buf)
	require.NoError(e.t, err, "nothing received")
	require.Equal(e.t, e.relay, from, "every datagram comes from the relay socket")
	return buf[:n]
}

// nothing requires that no datagram arrives within d.
func (e *endpoint) nothing(d time.Duration) {
	e.t.Helper()
	buf := make([]byte, 2048)
	e.conn.SetReadDeadline(time.Now().Add(d))
	n, _, err := e.conn.ReadFromUDPAddrPort(buf)
	require.Error(e.t, err, "unexpected datagram %x", buf[:n])
}

// bind binds the endpoint as side of g's session and waits for the BindOK.
func (e *endpoint) bind(g Grant, side uint8, counter uint64) {
	e.t.Helper()
	e.send(relayframe.AppendBind(nil, g.Session, side, counter, g.Secrets[side]))
	require.Equal(e.t, relayframe.AppendBindOK(nil, g.Session, side, counter), e.recv())
}

func data(g Grant, payload string) []byte {
	return relayframe.AppendData(nil, g.Session, []byte(payload))
}

func TestForwardBothWays(t *testing.T) {
	checkGoroutines(t)
	s := newRelay(t, Config{})
	g, err := s.Open(key(1), key(2))
	require.NoError(t, err)
	a, b := newEndpoint(t, s), newEndpoint(t, s)

	// Data before the other side is bound goes nowhere.
	a.bind(g, 0, 1)
	a.send(data(g, "too early"))
	b.bind(g, 1, 1)

	for i, p := range [][]byte{
		[]byte("hello"),
		{},
		bytes.Repeat([]byte{0xab}, relayframe.MaxPayload),
	} {
		frame := relayframe.AppendData(nil, g.Session, p)
		a.send(frame)
		require.Equal(t, frame, b.recv(), "a→b %d", i)
		b.send(frame)
		require.Equal(t, frame, a.recv(), "b→a %d", i)
	}
	// One byte over the largest frame is dropped.
	a.send(relayframe.AppendData(nil, g.Session, make([]byte, relayframe.MaxPayload+1)))
	a.send(data(g, "after"))
	require.Equal(t, data(g, "after"), b.recv())

	st := s.Stats()
	require.Equal(t, 1, st.Sessions)
	require.EqualValues(t, 7, st.ForwardedPackets)
	require.EqualValues(t, 1, st.DroppedNoPeer)
	require.EqualValues(t, 1, st.DroppedMalformed)
	require.EqualValues(t, 2, st.BindsAccepted)
}

func TestThirdPartyCannotInjectOrBind(t *testing.T) {
	checkGoroutines(t)
	s := newRelay(t, Config{})
	g, err := s.Open(key(1), key(2))
	require.NoError(t, err)
	a, b, evil := newEndpoint(t, s), newEndpoint(t, s), newEndpoint(t, s)
	aBind := relayframe.AppendBind(nil, g.Session, 0, 10, g.Secrets[0])
	a.send(aBind)
	require.Equal(t, relayframe.AppendBindOK(nil, g.Session, 0, 10), a.recv())
	b.bind(g, 1, 10)

	// The session ID alone lets no one inject: Data from another address
	// is dropped. a's next frame arrives, not evil's.
	evil.send(data(g, "forged"))
	a.send(data(g, "genuine"))
	require.Equal(t, data(g, "genuine"), b.recv())
	require.EqualValues(t, 1, s.Stats().DroppedWrongSource)

	// Nor bind: a Bind with a wrong secret (bad MAC), with the other
	// side's secret, or a replay of a's Bind (old counter) from evil's
	// address is refused and unanswered, and a stays bound.
	var wrong [relayframe.SecretSize]byte
	evil.send(relayframe.AppendBind(nil, g.Session, 0, 99, wrong))
	evil.send(relayframe.AppendBind(nil, g.Session, 0, 99, g.Secrets[1]))
	evil.send(aBind)
	evil.send(data(g, "forged again"))
	a.send(data(g, "still genuine"))
	require.Equal(t, data(g, "still genuine"), b.recv())
	evil.nothing(50 * time.Millisecond)
	st := s.Stats()
	require.EqualValues(t, 3, st.BindsRefused)
	require.EqualValues(t, 2, st.DroppedWrongSource)

	// A replay from a's own address is refused too (the counter).
	a.send(aBind)
	a.send(data(g, "x"))
	require.Equal(t, data(g, "x"), b.recv())
	require.EqualValues(t, 4, s.Stats().BindsRefused)

	// Frames for a session that does not exist.
	var other relayframe.Session
	other[0] = 1
	evil.send(relayframe.AppendData(nil, other, []byte("lost")))
	evil.send(relayframe.AppendBind(nil, other, 0, 1, wrong))
	// Frames that are not for the relay.
	evil.send(relayframe.AppendBindOK(nil, g.Session, 0, 1))
	evil.send([]byte{0x00, 1, 2})
	evil.send([]byte{relayframe.TypeData})
	a.send(data(g, "y"))
	require.Equal(t, data(g, "y"), b.recv())
	st = s.Stats()
	require.EqualValues(t, 2, st.DroppedUnknownSession)
	require.EqualValues(t, 3, st.DroppedMalformed)
	evil.nothing(50 * time.Millisecond)
}

func TestRebindMovesSide(t *testing.T) {
	checkGoroutines(t)
	s := newRelay(t, Config{})
	g, err := s.Open(key(1), key(2))
	require.NoError(t, err)
	a, b := newEndpoint(t, s), newEndpoint(t, s)
	a.bind(g, 0, 1)
	b.bind(g, 1, 1)
	// a's NAT rebinds: a new address with a newer counter takes side 0.
	a2 := newEndpoint(t, s)
	a2.bind(g, 0, 2)
	b.send(data(g, "to the new address"))
	require.Equal(t, data(g, "to the new address"), a2.recv())
	a.send(data(g, "from the old address"))
	a2.send(data(g, "from the new address"))
	require.Equal(t, data(g, "from the new address"), b.recv())
	a.nothing(50 * time.Millisecond)
	require.EqualValues(t, 1, s.Stats().DroppedWrongSource)
}

func TestRateLimits(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cfg        Config
		size, sent int
		want       int // the burst
	}{
		{"bytes", Config{Rate: 1000, Burst: 4 * relayframe.MaxFrameSize}, relayframe.MaxPayload, 20, 4},
		{"packets", Config{PacketRate: 8}, 10, 100, 64}, // burst: 64 packets
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			s := newRelay(t, tc.cfg)
			g, err := s.Open(key(1), key(2))
			require.NoError(t, err)
			a, b := newEndpoint(t, s), newEndpoint(t, s)
			a.bind(g, 0, 1)
			b.bind(g, 1, 1)
			frame := relayframe.AppendData(nil, g.Session, make([]byte, tc.size))
			sent, want := tc.sent, tc.want
			for range sent {
				a.send(frame)
			}
			got := 0
			for got < sent {
				b.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, _, err := b.conn.ReadFromUDPAddrPort(make([]byte, 2048)); err != nil {
					break
				}
				got++
			}
			st := s.Stats()
			// The burst passes (plus what refills meanwhile), the rest is dropped.
			require.GreaterOrEqual(t, got, want-1)
			require.LessOrEqual(t, got, want+2)
			require.EqualValues(t, got, st.ForwardedPackets)
			require.EqualValues(t, sent-got, st.DroppedOverLimit)
		})
	}
}

func TestClosePair(t *testing.T) {
	checkGoroutines(t)
	s := newRelay(t, Config{})
	g, err := s.Open(key(1), key(2))
	require.NoError(t, err)
	g2, err := s.Open(key(1), key(3))
	require.NoError(t, err)
	a, b := newEndpoint(t, s), newEndpoint(t, s)
	a.bind(g, 0, 1)
	b.bind(g, 1, 1)
	a.send(data(g, "before"))
	require.Equal(t, data(g, "before"), b.recv())

	require.Equal(t, 1, s.ClosePair(key(2), key(1)), "either order")
	a.send(data(g, "after"))
	b.send(data(g, "after"))
	a.send(relayframe.AppendBind(nil, g.Session, 0, 2, g.Secrets[0]))
	b.nothing(50 * time.Millisecond)
	a.nothing(10 * time.Millisecond)
	st := s.Stats()
	require.Equal(t, 1, st.Sessions, "the other pair's session stays")
	require.EqualValues(t, 3, st.DroppedUnknownSession)
	require.EqualValues(t, 1, st.SessionsClosed)
	require.Equal(t, 0, s.ClosePair(key(1), key(2)))

	c := newEndpoint(t, s)
	c.bind(g2, 1, 1)
}

func TestSessionLimits(t *testing.T) {
	checkGoroutines(t)
	s := newRelay(t, Config{MaxSessions: 6})
	var pair []Grant
	for range MaxPerPair + 1 {
		g, err := s.Open(key(1), key(2))
		require.NoError(t, err)
		pair = append(pair, g)
	}
	// The pair keeps its newest MaxPerPair: the first one was closed.
	require.Equal(t, MaxPerPair, s.Stats().Sessions)
	e := newEndpoint(t, s)
	e.send(relayframe.AppendBind(nil, pair[0].Session, 0, 1, pair[0].Secrets[0]))
	e.bind(pair[1], 0, 1)
	require.EqualValues(t, 1, s.Stats().DroppedUnknownSession)

	_, err := s.Open(key(3), key(4))
	require.NoError(t, err)
	_, err = s.Open(key(3), key(5))
	require.NoError(t, err)
	_, err = s.Open(key(3), key(6))
	require.ErrorIs(t, err, ErrFull)
	st := s.Stats()
	require.Equal(t, 6, st.Sessions)
	require.EqualValues(t, 1, st.SessionsRefused)
}

func TestIdleExpiry(t *testing.T) {
	s, err := New(Config{Conn: listen(t), Idle: time.Minute})
	require.NoError(t, err)
	t0 := time.Now()
	g1, err := s.Open(key(1), key(2))
	require.NoError(t, err)
	g2, err := s.Open(key(1), key(3))
	require.NoError(t, err)
	// An accepted Bind keeps g2 alive; forwarded Data would too.
	from := netip.MustParseAddrPort("127.0.0.1:9")
	pkt, to := s.handle(relayframe.AppendBind(nil, g2.Session, 0, 1, g2.Secrets[0]), from, t0.Add(50*time.Second), nil)
	require.NotNil(t, pkt)
	require.Equal(t, from, to)
	require.Equal(t, 0, s.expire(t0.Add(59*time.Second)))
	require.Equal(t, 1, s.expire(t0.Add(61*time.Second)))
	s.mu.Lock()
	require.Nil(t, s.sessions[g1.Session])
	require.NotNil(t, s.sessions[g2.Session])
	s.mu.Unlock()
	require.Equal(t, 1, s.expire(t0.Add(111*time.Second)))
	st := s.Stats()
	require.Equal(t, 0, st.Sessions)
	require.EqualValues(t, 2, st.SessionsExpired)
	require.NoError(t, s.Close())
}

func TestCloseLeavesSocket(t *testing.T) {
	checkGoroutines(t)
	conn := listen(t)
	s, err := New(Config{Conn: conn})
	require.NoError(t, err)
	require.NoError(t, s.Start())
	require.Error(t, s.Start())
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	_, err = s.Open(key(1), key(2))
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorIs(t, s.Start(), net.ErrClosed)

	// The caller's socket is open and has no deadline left.
	peer := listen(t)
	_, err = peer.WriteToUDPAddrPort([]byte("still mine"), conn.LocalAddr().(*net.UDPAddr).AddrPort())
	require.NoError(t, err)
	buf := make([]byte, 64)
	n, _, err := conn.ReadFromUDPAddrPort(buf)
	require.NoError(t, err)
	require.Equal(t, "still mine", string(buf[:n]))

	_, err = New(Config{})
	require.Error(t, err)
	_, err = New(Config{Conn: conn, Burst: 100})
	require.Error(t, err)
	_, err = New(Config{Conn: conn, Idle: -1})
	require.Error(t, err)
}

func TestDefaults(t *testing.T) {
	conn := listen(t)
	for _, tc := range []struct {
		cfg        Config
		packetRate int
	}{
		{Config{}, 16384},
		{Config{Rate: 256 << 20}, 524288},
		{Config{Rate: 100 << 10}, 1024},
		{Config{PacketRate: 10}, 10},
	} {
		tc.cfg.Conn = conn
		s, err := New(tc.cfg)
		require.NoError(t, err)
		require.Equal(t, tc.packetRate, s.cfg.PacketRate, "%+v", tc.cfg)
		require.Equal(t, max(float64(tc.packetRate)/8, 64), s.packetBurst)
	}
	s, err := New(Config{Conn: conn})
	require.NoError(t, err)
	require.Equal(t, DefaultRate, s.cfg.Rate)
	require.Equal(t, DefaultBurst, s.cfg.Burst)
	require.Equal(t, DefaultMaxSessions, s.cfg.MaxSessions)
	require.Equal(t, DefaultIdle, s.cfg.Idle)
}
