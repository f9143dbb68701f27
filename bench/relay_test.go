package bench

import (
	"context"
	"net"
	"net/netip"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRelayScenario runs the relay scenario alone at the smallest sizes:
// every path was set up and checked (RelayPaths fails otherwise), every
// figure is a positive number, and the other systems have none.
func TestRelayScenario(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Mode: ModeTiny, Only: regexp.MustCompile(`^relay$`), Systems: []System{Agentnet, QUIC}})
	require.NoError(t, err)
	require.Len(t, rep.Rows, len(relayMetrics()))
	for i, row := range rep.Rows {
		require.Equal(t, relayMetrics()[i].name, row.Metric)
		c := row.Cells[Agentnet]
		require.Empty(t, c.Error, row.Metric)
		require.NotNil(t, c.Value, row.Metric)
		require.Positive(t, *c.Value, row.Metric)
		require.Equal(t, "no relay", row.Cells[QUIC].NA)
	}
}

// TestFilterConn: a filterConn exchanges datagrams with the allowed
// addresses only; writes elsewhere report success and vanish.
func TestFilterConn(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	ap := func(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }
	friend, stranger := listen(), listen()
	f := newFilterConn(listen(), []netip.AddrPort{ap(friend)})
	defer f.Close()

	n, err := f.WriteTo([]byte("x"), stranger.LocalAddr())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = f.WriteTo([]byte("hi"), friend.LocalAddr())
	require.NoError(t, err)
	buf := make([]byte, 16)
	friend.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _, err = friend.ReadFrom(buf)
	require.NoError(t, err)
	require.Equal(t, "hi", string(buf[:n]))
	stranger.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, _, err = stranger.ReadFrom(buf)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a datagram to a stranger got through")

	_, err = stranger.WriteTo([]byte("no"), f.LocalAddr())
	require.NoError(t, err)
	_, err = friend.WriteTo([]byte("yes"), f.LocalAddr())
	require.NoError(t, err)
	f.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := f.ReadFrom(buf)
	require.NoError(t, err)
	require.Equal(t, "yes", string(buf[:n]))
	require.Equal(t, ap(friend), from.(*net.UDPAddr).AddrPort())
}
