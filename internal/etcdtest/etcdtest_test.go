package etcdtest

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCluster: three members start, serve writes, survive the loss of
// their leader (a new one is elected, writes go on), and a restarted
// member catches up.
func TestCluster(t *testing.T) {
	start := time.Now()
	c := Start(t, 3)
	t.Logf("3 members up in %v", time.Since(start).Round(time.Millisecond))
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := cli.Put(ctx, "k", "v1")
	require.NoError(t, err)

	leader, err := c.WaitLeader(5 * time.Second)
	require.NoError(t, err)
	c.Stop(leader)
	next, err := c.WaitLeader(5 * time.Second)
	require.NoError(t, err)
	require.NotEqual(t, leader, next)
	_, err = cli.Put(ctx, "k", "v2")
	require.NoError(t, err)

	require.NoError(t, c.Restart(leader))
	resp, err := cli.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(resp.Kvs[0].Value))
	require.Len(t, c.Endpoints(), 3)
}

// TestBinary: three etcd processes from the etcd binary (Debian's
// etcd-server, v3.4) form a cluster and survive the loss of their leader.
func TestBinary(t *testing.T) {
	start := time.Now()
	b := StartBinary(t, 3)
	t.Logf("3 etcd processes up in %v", time.Since(start).Round(time.Millisecond))
	cli := b.client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := cli.Put(ctx, "k", "v1")
	require.NoError(t, err)
	leader := b.Leader()
	require.GreaterOrEqual(t, leader, 0)
	b.Kill(leader)
	require.Eventually(t, func() bool { l := b.Leader(); return l >= 0 && l != leader }, 10*time.Second, 50*time.Millisecond)
	_, err = cli.Put(ctx, "k", "v2")
	require.NoError(t, err)
	b.Restart(leader)
	resp, err := cli.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(resp.Kvs[0].Value))
}

// TestServerOnlyInTests: the etcd server (this package's embed) is linked
// into no binary: only tests import it.
func TestServerOnlyInTests(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../../cmd/...", "../../bench/cmd/...").CombinedOutput()
	require.NoError(t, err, "%s", out)
	deps := string(out)
	require.Contains(t, deps, "go.etcd.io/etcd/client/v3", "the binary uses the etcd client")
	require.NotContains(t, deps, "go.etcd.io/etcd/server/v3")
	require.NotContains(t, deps, "github.com/agentnet/agentnet/internal/etcdtest")
}
