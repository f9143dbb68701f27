package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/daemon"
	"github.com/agentnet/agentnet/internal/etcdtest"
)

// TestUpSeveralServers: "agentnet up --rendezvous r1,r2" (two servers of
// one service: one etcd, one key) registers at the first, and when that one
// is stopped, moves to the second and keeps working: a trust request by
// name reaches bob, who knows only the second. (Before the fix, up refused
// the comma list: it resolved "r1,r2" as one address.)
func TestUpSeveralServers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs etcd, servers and daemons")
	}
	etcd := etcdtest.Start(t, 1)
	e := newCLIEnv(t)
	common := []string{"-store", "etcd://" + strings.Join(trimScheme(etcd.Endpoints()), ","),
		"-identity", filepath.Join(t.TempDir(), "cluster.key"), "-etcd-lease-ttl", "3s"}
	r1 := e.startRendezvous(append(common, "-data", t.TempDir())...)
	r2 := e.startRendezvous(append(common, "-data", t.TempDir())...)
	require.Equal(t, r1.key, r2.key, "one cluster key")

	e.up("a", "--rendezvous", r1.addr+","+r2.addr, "--rendezvous-key", r1.key, "--hostname", "alice")
	e.up("b", "--rendezvous", r2.addr, "--rendezvous-key", r2.key, "--hostname", "bob")
	registered := func(state string) bool {
		var st ctl.Status
		e.json(state, "status", &st, "status")
		return st.Rendezvous.Registered
	}
	require.Eventually(t, func() bool {
		return registered("a") && registered("b") && sessions(r1.metrics) == 1 && sessions(r2.metrics) == 1
	}, 15*time.Second, 50*time.Millisecond, "alice on the first server, bob on the second")

	r1.stop(syscall.SIGTERM)
	require.Eventually(t, func() bool {
		return sessions(r2.metrics) == 2 && registered("a")
	}, 20*time.Second, 50*time.Millisecond, "alice moved to the second server")

	require.Eventually(t, func() bool {
		_, _, code := e.run("a", nil, "trust", "request", "bob", "--json")
		return code == 0
	}, 15*time.Second, 100*time.Millisecond, "alice's trust request to bob")
	require.Eventually(t, func() bool {
		var pend ctl.TrustList
		e.json("b", "trust pending", &pend, "trust", "pending")
		return len(pend.Records) == 1
	}, 15*time.Second, 50*time.Millisecond, "bob sees alice's request")
}

// TestCheckRendezvousAddrList: up's early check passes a list of servers
// of which one resolves (the node tries the others), and fails, naming
// each, when none does.
func TestCheckRendezvousAddrList(t *testing.T) {
	cfg := func(s string) daemon.Config { return daemon.Config{RendezvousAddr: s} }
	require.NoError(t, checkRendezvousAddr(cfg("")))
	require.NoError(t, checkRendezvousAddr(cfg("127.0.0.1:7420")))
	require.NoError(t, checkRendezvousAddr(cfg("no-such-host.invalid:7420, 127.0.0.1:7420")))
	err := checkRendezvousAddr(cfg("no-such-host.invalid:7420,other.invalid:7420"))
	var ce *ctl.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, ctl.CodeUnavailable, ce.Code)
	require.Contains(t, ce.Message, "rendezvous no-such-host.invalid:7420: ")
	require.Contains(t, ce.Message, "; rendezvous other.invalid:7420: ")
}
