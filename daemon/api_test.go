package daemon

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
)

// TestTrustForgetAndRepeat: repeated requests to one peer leave one
// pending-out record (before the fix: one per request); forget deletes a
// revoked peer's record and our unanswered requests, refuses a trusted peer
// (conflict) and an unknown one (not_found).
func TestTrustForgetAndRepeat(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	for range 3 {
		a.must(t, "POST", ctl.PathTrustRequest, ctl.TrustRequest{Peer: "carol"}, nil)
	}
	var l ctl.TrustList
	a.must(t, "GET", ctl.PathTrust, nil, &l)
	n := 0
	for _, r := range l.Records {
		if r.Target == "carol" {
			n++
		}
	}
	require.Equal(t, 1, n, "one pending-out record per target: %+v", l.Records)

	var fr ctl.ForgetResult
	a.must(t, "POST", ctl.PathTrustForget, ctl.PeerRequest{Peer: "carol"}, &fr)
	require.Len(t, fr.Forgotten, 1)
	require.Equal(t, "pending-out", fr.Forgotten[0].State)
	requireCode(t, a.do(t, "POST", ctl.PathTrustForget, ctl.PeerRequest{Peer: "carol"}, nil), ctl.CodeNotFound)
	requireCode(t, a.do(t, "POST", ctl.PathTrustForget, ctl.PeerRequest{Peer: "bob"}, nil), ctl.CodeConflict)

	b.must(t, "POST", ctl.PathTrustRevoke, ctl.PeerRequest{Peer: "alice"}, nil)
	b.must(t, "POST", ctl.PathTrustForget, ctl.PeerRequest{Peer: "alice"}, &fr)
	require.Len(t, fr.Forgotten, 1)
	require.Equal(t, "revoked", fr.Forgotten[0].State)
	b.must(t, "GET", ctl.PathTrust, nil, &l)
	require.Empty(t, l.Records)
}

// TestMessageOverOwnLimit: a message over the sending daemon's own limit is
// too_large with the limit (before the fix: invalid_argument "request body
// over 1463637 bytes", or "exceeds this daemon's limit" as invalid_argument).
func TestMessageOverOwnLimit(t *testing.T) {
	checkNoLeaks(t)
	srv := startPairOnLimit(t)
	for _, size := range []int{100 << 10, 2 << 20} {
		err := srv.do(t, "POST", ctl.PathMessages, ctl.MessageRequest{Peer: "alice", DataBase64: b64(bytes.Repeat([]byte{1}, size))}, nil)
		requireCode(t, err, ctl.CodeTooLarge)
		require.Contains(t, err.Error(), "65536 bytes (--max-message)")
	}
}

func startPairOnLimit(t *testing.T) *testDaemon {
	t.Helper()
	_, b := pair(t, Config{MaxMessage: 64 << 10})
	// b (64 KiB) sends to a (1 MiB): b's own limit is what refuses.
	b.must(t, "POST", ctl.PathMessages, ctl.MessageRequest{Peer: "alice", Text: "small"}, nil)
	return b
}

// TestForwardNeedsAResolvableName: a forward to a hostname that resolves to
// no trusted peer fails at once (not_trusted) instead of starting with
// "addr":"" (before the fix); to a known peer it names the address.
func TestForwardNeedsAResolvableName(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	err := a.do(t, "POST", ctl.PathForward, ctl.ForwardRequest{Listen: "127.0.0.1:0", Peer: "nosuchname", Port: 80}, nil)
	requireCode(t, err, ctl.CodeNotTrusted)
	var st ctl.Status
	b.must(t, "GET", ctl.PathStatus, nil, &st)
	s, err := a.c.Stream(t.Context(), "POST", ctl.PathForward, ctl.ForwardRequest{Listen: "127.0.0.1:0", Peer: "bob", Port: 80})
	require.NoError(t, err)
	defer s.Close()
	var fw ctl.Forwarded
	require.NoError(t, s.Next(&fw))
	require.Equal(t, st.Addr, fw.Addr)
}

// TestHostnameAppliesLive: hostname set takes effect at once (the README
// said restart_required): another agent reaches us by the new name.
func TestHostnameAppliesLive(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	var hr ctl.HostnameResult
	b.must(t, "PUT", ctl.PathHostname, ctl.HostnameRequest{Hostname: "bobby"}, &hr)
	require.True(t, hr.Applied)
	require.False(t, hr.RestartRequired)
	require.True(t, hr.Saved)
	var st ctl.Status
	b.must(t, "GET", ctl.PathStatus, nil, &st)
	require.Equal(t, "bobby", st.Hostname)
	// A request by the new name reaches bob.
	c := startDaemon(t, Config{StateDir: t.TempDir(), RendezvousAddr: a.cfg.RendezvousAddr, RendezvousKey: a.cfg.RendezvousKey})
	waitRegistered(t, c)
	var tr ctl.TrustResult
	c.must(t, "POST", ctl.PathTrustRequest, ctl.TrustRequest{Peer: "bobby"}, &tr)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		b.must(t, "GET", ctl.PathTrustPending, nil, &l)
		return len(l.Records) == 1
	}, 10*time.Second, 20*time.Millisecond)
}
