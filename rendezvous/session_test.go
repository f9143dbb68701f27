package rendezvous_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// TestSessionLossDetected: the rendezvous dies without a word (its socket
// closed first, so no CONNECTION_CLOSE reaches the client) and comes back 3 s
// later on the same port. The client reports the session lost within
// PingPeriod + SessionIdle (4.5 s) of the server's last packet, with the
// reason, and registers again as soon as the server answers. (Before, State did not exist and the
// client stayed "registered" on the dead connection for QUIC's 30 s idle
// timeout; after a restart it waited for that timeout too, because its
// keepalives were too small to draw a stateless reset.)
func TestSessionLossDetected(t *testing.T) {
	checkGoroutines(t)
	dir := t.TempDir()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Conn: conn, DataDir: dir})
	alice := newAgent(t, srv, nil, "alice")
	st := alice.c.State()
	require.Equal(t, rendezvous.SessionRegistered, st.Status)
	require.Equal(t, srv.AddrPort(), st.Server)
	require.NoError(t, st.LastError)

	addr := conn.LocalAddr().String()
	require.NoError(t, conn.Close())
	killed := time.Now()
	require.NoError(t, srv.Close())
	require.Eventually(t, func() bool { return alice.c.State().Status == rendezvous.SessionConnecting },
		2*(rendezvous.PingPeriod+rendezvous.SessionIdle), 10*time.Millisecond, "the lost session is reported")
	st = alice.c.State()
	t.Logf("session lost reported %v after the server died: %v", st.Since.Sub(killed).Round(time.Millisecond), st.LastError)
	require.Error(t, st.LastError)
	require.True(t, st.Since.After(killed))
	require.False(t, st.Server.IsValid())
	ctx, cancel := context.WithTimeout(ctxT(t), 50*time.Millisecond)
	require.ErrorIs(t, alice.c.WaitReady(ctx), context.DeadlineExceeded, "not registered while the server is gone")
	cancel()

	time.Sleep(time.Until(killed.Add(3 * time.Second))) // the outage
	srv2 := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Addr: addr, DataDir: dir})
	back := time.Now()
	require.Eventually(t, func() bool { return alice.c.State().Status == rendezvous.SessionRegistered },
		10*time.Second, 10*time.Millisecond)
	t.Logf("registered again %v after the server came back", time.Since(back).Round(time.Millisecond))
	st = alice.c.State()
	require.True(t, st.Since.After(back))
	require.Equal(t, srv2.AddrPort(), st.Server)
	require.Error(t, st.LastError, "the last failure stays visible with its time")
	require.True(t, st.LastErrorAt.Before(st.Since))
	info, err := alice.c.Lookup(ctxT(t), target(t, "alice"))
	require.NoError(t, err)
	require.True(t, info.Online)

	require.NoError(t, alice.c.Close())
	require.Equal(t, rendezvous.SessionClosed, alice.c.State().Status)
}

// TestSessionRestartDetectedAtOnce: a server restarted on the same port and
// identity (state kept) answers the client's next Ping with a stateless
// reset, so the client registers again within about one PingPeriod, well
// before SessionIdle.
func TestSessionRestartDetectedAtOnce(t *testing.T) {
	checkGoroutines(t)
	dir := t.TempDir()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Conn: conn, DataDir: dir})
	alice := newAgent(t, srv, nil, "alice")
	addr := conn.LocalAddr().String()
	require.NoError(t, conn.Close())
	require.NoError(t, srv.Close())
	srv2 := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Addr: addr, DataDir: dir})
	back := time.Now()
	require.Eventually(t, func() bool {
		st := alice.c.State()
		return st.Status == rendezvous.SessionRegistered && st.Since.After(back)
	}, 10*time.Second, 10*time.Millisecond)
	st := alice.c.State()
	t.Logf("registered again %v after the restart: %v", st.Since.Sub(back).Round(time.Millisecond), st.LastError)
	require.ErrorContains(t, st.LastError, "stateless reset", "the restarted server reset the old connection")
	require.Equal(t, 1, srv2.Stats().Sessions)
}
