package daemon

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
)

// freeUDPAddr returns a 127.0.0.1 UDP address nothing listens on (for a
// moment).
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	return c.LocalAddr().String()
}

func status(t *testing.T, d *testDaemon) ctl.Status {
	t.Helper()
	var st ctl.Status
	d.must(t, "GET", ctl.PathStatus, nil, &st)
	return st
}

// TestZeroConfigRendezvous: the first daemon starts the local rendezvous,
// the second uses it (no second rendezvous), they find each other by
// hostname; when the host exits the other takes the rendezvous over, and the
// first comes back as a client of it.
func TestZeroConfigRendezvous(t *testing.T) {
	checkNoLeaks(t)
	oldPeriod, oldAfter := watchPeriod, takeoverAfter
	watchPeriod, takeoverAfter = 100*time.Millisecond, 2
	t.Cleanup(func() { watchPeriod, takeoverAfter = oldPeriod, oldAfter })

	dir := t.TempDir()
	local := freeUDPAddr(t)
	cfg := func(name string) Config {
		return Config{StateDir: filepath.Join(dir, name), Hostname: name, LocalRendezvous: local, RendezvousDir: filepath.Join(dir, "rendezvous")}
	}
	a := startDaemon(t, cfg("alice"))
	b := startDaemon(t, cfg("bob"))
	require.Equal(t, "embedded", status(t, a).Rendezvous.Mode)
	require.Equal(t, "local", status(t, b).Rendezvous.Mode)
	waitRegistered(t, a)
	waitRegistered(t, b)
	stA, stB := status(t, a), status(t, b)
	require.NotEmpty(t, stA.Rendezvous.Key)
	require.Equal(t, stA.Rendezvous.Key, stB.Rendezvous.Key, "both pinned the one rendezvous")

	var res ctl.TrustResult
	a.must(t, "POST", ctl.PathTrustRequest, ctl.TrustRequest{Peer: "bob"}, &res)
	require.True(t, res.Delivered)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		b.must(t, "GET", ctl.PathTrustPending, nil, &l)
		return len(l.Records) == 1
	}, 10*time.Second, 20*time.Millisecond)
	b.must(t, "POST", ctl.PathTrustApprove, ctl.PeerRequest{Peer: "alice"}, &res)

	// The host goes away: bob takes the rendezvous over.
	a.stop()
	require.Eventually(t, func() bool {
		st := status(t, b)
		return st.Rendezvous.Mode == "embedded" && st.Rendezvous.Registered
	}, 15*time.Second, 50*time.Millisecond)

	// Alice comes back and finds bob's rendezvous (same key: same state).
	a2 := startDaemon(t, cfg("alice"))
	require.Equal(t, "local", status(t, a2).Rendezvous.Mode)
	waitRegistered(t, a2)
	require.Equal(t, stA.Rendezvous.Key, status(t, a2).Rendezvous.Key)
	var ping ctl.PingResult
	a2.must(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: "bob", Count: 1}, &ping)
	require.Len(t, ping.RTTs, 1)
}
