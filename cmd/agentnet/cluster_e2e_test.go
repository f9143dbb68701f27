package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/internal/etcdtest"
)

// rdvProc is an "agentnet rendezvous" process.
type rdvProc struct {
	*bg
	addr, key, metrics string
}

// startRendezvous starts "agentnet rendezvous" with args and reads what it
// prints: its address, key and metrics address.
func (e *cliEnv) startRendezvous(args ...string) *rdvProc {
	e.t.Helper()
	p := &rdvProc{bg: e.start("", nil, append([]string{"rendezvous", "-listen", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-log-format", "json"}, args...)...)}
	for p.addr == "" || p.key == "" || p.metrics == "" {
		l := string(p.line())
		switch {
		case strings.HasPrefix(l, "rendezvous listening on "):
			p.addr = strings.TrimPrefix(l, "rendezvous listening on ")
		case strings.HasPrefix(l, "server key "):
			p.key = strings.TrimPrefix(l, "server key ")
		case strings.HasPrefix(l, "metrics on http://"):
			p.metrics = strings.TrimSuffix(strings.TrimPrefix(l, "metrics on http://"), "/metrics")
		}
	}
	return p
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// unixGet GETs path on a daemon's control socket.
func unixGet(t *testing.T, sock, path string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://agentnet" + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// freeUDPPort returns a UDP port that was free on 127.0.0.1.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// blockDirect drops UDP between two local ports in both directions with
// nftables (root only), so two agents on this host can reach each other
// only through a relay. The table is deleted in Cleanup.
func blockDirect(t *testing.T, a, b int) {
	t.Helper()
	if os.Geteuid() != 0 || exec.Command("nft", "--version").Run() != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root and nft to block the direct path (required when CI=true)")
		}
		t.Skip("needs root and nft to block the direct path")
	}
	var r [4]byte
	rand.Read(r[:])
	table := "agentnet_e2e_" + hex.EncodeToString(r[:])
	rules := fmt.Sprintf(`table inet %s {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr 127.0.0.1 udp sport %d udp dport %d drop
		ip daddr 127.0.0.1 udp sport %d udp dport %d drop
	}
}
`, table, a, b, b, a)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "nft: %s", out)
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", table).Run() })
}

// TestClusterEndToEnd: an operator's deployment in miniature: three etcd
// processes from the etcd binary, two "agentnet rendezvous" processes on
// them sharing one server key, and two "agentnet up" daemons, one on each
// server, whose direct path is blocked: trust request, approval, ping, and
// a relayed connection, each crossing servers; both servers' metrics and
// readiness, and the daemons' metrics.
func TestClusterEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs etcd, servers and daemons")
	}
	portA, portB := freeUDPPort(t), freeUDPPort(t)
	blockDirect(t, portA, portB)
	etcd := etcdtest.StartBinary(t, 3)
	e := newCLIEnv(t)
	store := "etcd://" + strings.Join(trimScheme(etcd.Endpoints()), ",")
	keyFile := filepath.Join(t.TempDir(), "cluster.key")
	common := []string{"-store", store, "-identity", keyFile, "-etcd-lease-ttl", "3s"}
	r1 := e.startRendezvous(append(common, "-data", t.TempDir())...)
	r2 := e.startRendezvous(append(common, "-data", t.TempDir())...)
	require.Equal(t, r1.key, r2.key, "one cluster key")
	for _, r := range []*rdvProc{r1, r2} {
		code, body := httpGet(t, "http://"+r.metrics+"/readyz")
		require.Equal(t, http.StatusOK, code, body)
		code, _ = httpGet(t, "http://"+r.metrics+"/healthz")
		require.Equal(t, http.StatusOK, code)
	}

	da, stA := e.up("a", "--rendezvous", r1.addr, "--rendezvous-key", r1.key, "--hostname", "alice", "--listen", fmt.Sprintf("127.0.0.1:%d", portA))
	db, stB := e.up("b", "--rendezvous", r2.addr, "--rendezvous-key", r2.key, "--hostname", "bob", "--listen", fmt.Sprintf("127.0.0.1:%d", portB))
	_, _ = da, db
	for _, s := range []string{"a", "b"} {
		require.Eventually(t, func() bool {
			var st ctl.Status
			e.json(s, "status", &st, "status")
			return st.Rendezvous.Registered
		}, 15*time.Second, 50*time.Millisecond)
	}

	// Trust across servers: alice (server 1) asks bob (server 2) by name.
	var tr ctl.TrustResult
	e.json("a", "trust request", &tr, "trust", "request", "bob", "--note", "from the other server")
	require.Eventually(t, func() bool {
		var pend ctl.TrustList
		e.json("b", "trust pending", &pend, "trust", "pending")
		return len(pend.Records) == 1 && pend.Records[0].Addr == stA.Addr
	}, 15*time.Second, 50*time.Millisecond)
	e.json("b", "trust approve", &tr, "trust", "approve", "alice")
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		e.json("a", "trust list", &l, "trust", "list")
		return len(l.Records) == 1 && l.Records[0].State == "trusted"
	}, 15*time.Second, 50*time.Millisecond)

	// Ping: the only path is the relay of alice's server, which bob
	// reaches through the introduction his own server pushed.
	var ping ctl.PingResult
	e.json("a", "ping", &ping, "ping", "bob", "-c", "3", "-i", "20ms")
	require.Len(t, ping.RTTs, 3)
	var peers ctl.PeerList
	e.json("a", "peers", &peers, "peers")
	require.NotEmpty(t, peers.Peers)
	for _, p := range peers.Peers {
		require.Equal(t, "relay", p.Path, "direct UDP between the agents is blocked")
		require.Equal(t, stB.Addr, p.Addr)
	}
	// Data both ways over the relayed connection, byte-exact.
	path, data := randomFile(t, 256<<10)
	var fr ctl.DeliveryResult
	e.json("a", "file send", &fr, "file", "send", "bob", path)
	require.Equal(t, int64(len(data)), fr.Bytes)
	require.Equal(t, hex.EncodeToString(sha256Sum(data)), fr.SHA256)

	// What an operator sees.
	_, m1 := httpGet(t, "http://"+r1.metrics+"/metrics")
	_, m2 := httpGet(t, "http://"+r2.metrics+"/metrics")
	for _, m := range []string{m1, m2} {
		require.Contains(t, m, "agentnet_rendezvous_cluster_servers 2")
		require.Contains(t, m, "agentnet_rendezvous_cluster_sessions 2")
		require.Contains(t, m, `agentnet_rendezvous_store_agents{store="etcd"} 2`)
		require.Contains(t, m, "agentnet_rendezvous_etcd_fresh 1")
		require.Contains(t, m, "agentnet_rendezvous_etcd_txn_seconds_bucket")
	}
	require.Regexp(t, `agentnet_rendezvous_relay_forwarded_bytes_total [1-9]`, m1+m2)
	require.Regexp(t, `agentnet_rendezvous_cluster_pushes_(sent|received)_total [1-9]`, m1+m2)
	code, nm := unixGet(t, stA.Socket, "/v1/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, nm, `agentnet_node_links{path="relay",role="active"} 1`)
	require.Contains(t, nm, "agentnet_node_rendezvous_registered 1")
	require.Contains(t, nm, "agentnet_node_trusted_peers 1")
	require.Regexp(t, `agentnet_node_relay_links_total [1-9]`, nm)
}

func trimScheme(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = strings.TrimPrefix(u, "http://")
	}
	return out
}
