package daemon

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/stretchr/testify/require"
)

// TestStatusFollowsRendezvousSession (issue 9 item 8): when the rendezvous
// dies, status stops saying registered once the client declares the
// session lost (rendezvous.PingPeriod + SessionIdle, 4.5 s, after its last
// packet), not after QUIC's idle timeout (it said registered for ~22 s):
// status's Registered is the session's state, the node's RendezvousState
// says the same, and status's error says why the session was lost.
func TestStatusFollowsRendezvousSession(t *testing.T) {
	checkNoLeaks(t)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Conn: conn})
	d := startDaemon(t, Config{StateDir: filepath.Join(t.TempDir(), "a"), RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey()})
	waitRegistered(t, d)
	rs, ok := d.node.RendezvousState()
	require.True(t, ok)
	require.Equal(t, rendezvous.SessionRegistered, rs.Status)

	// The server dies as if killed: its socket goes first, so no
	// CONNECTION_CLOSE tells the client.
	require.NoError(t, conn.Close())
	died := time.Now()
	require.NoError(t, srv.Close())
	require.Eventually(t, func() bool { return !status(t, d).Rendezvous.Registered }, 15*time.Second, 20*time.Millisecond,
		"status still says registered")
	t.Logf("status said not registered %v after the rendezvous died (%v expected)", time.Since(died).Round(10*time.Millisecond),
		rendezvous.PingPeriod+rendezvous.SessionIdle)
	rs, _ = d.node.RendezvousState()
	require.NotEqual(t, rendezvous.SessionRegistered, rs.Status)
	st := status(t, d)
	require.False(t, st.Rendezvous.Registered, "and stays so while the server is down")
	require.NotEmpty(t, st.Rendezvous.Error, "status says why")
	t.Logf("status error: %s", st.Rendezvous.Error)
}
