package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/etcdtest"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/trustdb"
)

// clusterNode starts a quicnode.Node that knows every server, preferring
// servers[prefer].
func clusterNode(t *testing.T, servers []string, prefer int, key addressing.PublicKey) *quicnode.Node {
	t.Helper()
	store, err := trustdb.Open(filepath.Join(t.TempDir(), "node"))
	require.NoError(t, err)
	others := append(append([]string(nil), servers[prefer+1:]...), servers[:prefer]...)
	n, err := quicnode.New(quicnode.Config{
		Store: store, ListenAddr: "127.0.0.1:0",
		RendezvousAddr: servers[prefer], RendezvousAddrs: others, RendezvousKey: key,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	require.NoError(t, n.Start(ctx))
	t.Cleanup(func() {
		n.Close()
		store.Close()
	})
	require.NoError(t, n.WaitRendezvous(ctx))
	return n
}

func trusted(n *quicnode.Node, k addressing.PublicKey) bool {
	for _, r := range n.TrustRecords() {
		if r.Key == k && r.State == trustdb.StateTrusted {
			return true
		}
	}
	return false
}

func pendingFrom(n *quicnode.Node, k addressing.PublicKey) bool {
	for _, r := range n.PendingTrust() {
		if r.Key == k {
			return true
		}
	}
	return false
}

var sessionsRe = regexp.MustCompile(`(?m)^agentnet_rendezvous_sessions (\d+)$`)

// sessions reads a server's agentnet_rendezvous_sessions (-1 if it does
// not answer).
func sessions(metricsAddr string) int {
	c := net.Dialer{Timeout: 200 * time.Millisecond}
	conn, err := c.Dial("tcp", metricsAddr)
	if err != nil {
		return -1
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
	b, _ := io.ReadAll(bufio.NewReader(conn))
	m := sessionsRe.FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestClusterFaults: three etcd processes, three "agentnet rendezvous"
// processes on them and 23 agents (in this process) that know all three
// servers. During a burst of 200 trust requests and approvals, one
// rendezvous is killed with SIGKILL and then the etcd leader is. Every
// request and approval ends in a trusted pair on both sides (nothing
// acknowledged is lost), the killed server's agents register elsewhere,
// and a transfer between two agents of the killed server, direct between
// them, goes on undisturbed and arrives byte-exact.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd, servers and agents")
	}
	etcd := etcdtest.StartBinary(t, 3)
	e := newCLIEnv(t)
	store := "etcd://" + joinComma(trimScheme(etcd.Endpoints()))
	keyFile := filepath.Join(t.TempDir(), "cluster.key")
	var procs []*rdvProc
	var addrs []string
	for range 3 {
		p := e.startRendezvous("-store", store, "-identity", keyFile, "-etcd-lease-ttl", "3s", "-data", t.TempDir())
		procs = append(procs, p)
		addrs = append(addrs, p.addr)
	}
	key, err := addressing.ParsePublicKey(procs[0].key)
	require.NoError(t, err)

	const nAgents = 21
	agents := make([]*quicnode.Node, nAgents)
	var wg sync.WaitGroup
	for i := range agents {
		wg.Add(1)
		go func() { defer wg.Done(); agents[i] = clusterNode(t, addrs, i%3, key) }()
	}
	p, q := clusterNode(t, addrs, 0, key), clusterNode(t, addrs, 0, key)
	wg.Wait()
	total := nAgents + 2
	require.Eventually(t, func() bool {
		return sessions(procs[0].metrics)+sessions(procs[1].metrics)+sessions(procs[2].metrics) == total
	}, 10*time.Second, 20*time.Millisecond)
	onKilled := sessions(procs[0].metrics)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// p and q trust each other and connect directly.
	require.NoError(t, p.RequestTrust(ctx, q.Addr().String(), ""))
	require.Eventually(t, func() bool { return pendingFrom(q, p.PublicKey()) }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, q.ApproveTrust(ctx, p.Addr().String()))
	require.Eventually(t, func() bool { return trusted(p, q.PublicKey()) }, 10*time.Second, 10*time.Millisecond)
	const size = 48 << 20
	ln, err := q.Listen(5000)
	require.NoError(t, err)
	defer ln.Close()
	gotSum := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			gotSum <- nil
			return
		}
		defer c.Close()
		h := sha256.New()
		_, err = io.CopyN(h, c, size)
		if err != nil {
			gotSum <- nil
			return
		}
		sum := h.Sum(nil)
		c.Write(sum)
		gotSum <- sum
	}()
	conn, err := p.Dial(ctx, q.Addr().String(), 5000)
	require.NoError(t, err)
	defer conn.Close()
	peers := p.Peers()
	require.Len(t, peers, 1)
	require.Equal(t, "direct", peers[0].Path)
	linkSince := peers[0].Since
	payload := make([]byte, size)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	sent := make(chan error, 1)
	go func() { // paced over ~6 s, so the faults happen during the transfer
		for off := 0; off < size; off += 1 << 20 {
			if _, err := conn.Write(payload[off : off+1<<20]); err != nil {
				sent <- err
				return
			}
			time.Sleep(120 * time.Millisecond)
		}
		sent <- nil
	}()

	// The burst: 200 requests, each approved, from worker goroutines.
	type pair struct{ a, b *quicnode.Node }
	var pairs []pair
	for i := 0; i < nAgents && len(pairs) < 200; i++ {
		for j := i + 1; j < nAgents && len(pairs) < 200; j++ {
			pairs = append(pairs, pair{agents[i], agents[j]})
		}
	}
	var started atomic.Int32
	work := make(chan pair)
	errs := make(chan error, len(pairs))
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pr := range work {
				started.Add(1)
				errs <- func() error {
					// A failed call leaves the message queued in the outbox,
					// retried; the pair must end up trusted either way.
					_ = pr.a.RequestTrust(ctx, pr.b.Addr().String(), "")
					for !pendingFrom(pr.b, pr.a.PublicKey()) && !trusted(pr.b, pr.a.PublicKey()) {
						if ctx.Err() != nil {
							return fmt.Errorf("%s never saw the request of %s", pr.b.Addr(), pr.a.Addr())
						}
						time.Sleep(20 * time.Millisecond)
					}
					if !trusted(pr.b, pr.a.PublicKey()) {
						_ = pr.b.ApproveTrust(ctx, pr.a.Addr().String())
					}
					for !trusted(pr.a, pr.b.PublicKey()) {
						if ctx.Err() != nil {
							return fmt.Errorf("%s never saw the approval of %s", pr.a.Addr(), pr.b.Addr())
						}
						time.Sleep(20 * time.Millisecond)
					}
					return nil
				}()
			}
		}()
	}
	var killed time.Time
	var moved atomic.Int64 // ns from the kill until the others have every agent
	for i, pr := range pairs {
		work <- pr
		switch i {
		case 50: // kill -9 the server that p, q and a third of the agents are on
			killed = time.Now()
			procs[0].cmd.Process.Signal(syscall.SIGKILL)
			go func() {
				for sessions(procs[1].metrics)+sessions(procs[2].metrics) < total {
					time.Sleep(20 * time.Millisecond)
				}
				moved.Store(int64(time.Since(killed)))
			}()
		case 120: // and the etcd leader
			// Mid-burst (one read at one revision): the counts match.
			checkEtcdCounts(t, etcd.Endpoints(), "/agentnet/rendezvous/")
			leader := etcd.Leader()
			require.GreaterOrEqual(t, leader, 0)
			etcd.Kill(leader)
			t.Logf("killed etcd member %d (the leader) %v after the server", leader, time.Since(killed).Round(time.Millisecond))
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	burst := time.Since(killed)
	for _, pr := range pairs {
		require.True(t, trusted(pr.a, pr.b.PublicKey()) && trusted(pr.b, pr.a.PublicKey()))
	}
	require.Eventually(t, func() bool { return moved.Load() > 0 }, 10*time.Second, 10*time.Millisecond)
	t.Logf("%d agents on the killed server registered elsewhere %v after the kill; 200 pairs trusted %v after it",
		onKilled, time.Duration(moved.Load()).Round(time.Millisecond), burst.Round(time.Millisecond))
	require.Less(t, time.Duration(moved.Load()), 10*time.Second, "the killed server's agents moved to the others")

	// The direct transfer went on, byte-exact, on the same connection.
	require.NoError(t, <-sent)
	sum := <-gotSum
	require.Equal(t, want[:], sum)
	echo := make([]byte, sha256.Size)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadFull(conn, echo)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want[:], echo))
	peers = p.Peers()
	require.NotEmpty(t, peers)
	require.Equal(t, "direct", peers[0].Path)
	require.Equal(t, linkSince, peers[0].Since, "the direct connection was not replaced")

	// The counts the servers keep in etcd match the records, after a
	// server and the etcd leader died in the middle of the burst.
	checkEtcdCounts(t, etcd.Endpoints(), "/agentnet/rendezvous/")
}

// checkEtcdCounts reads every record under prefix and checks the kept
// counts (rendezvous/etcdstore.go, "Layout") against them: agents,
// pending requests in all and per requester, messages per mailbox.
func checkEtcdCounts(t *testing.T, endpoints []string, prefix string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	have := map[string]int{} // count key → records counted
	kept := map[string]int{} // count key → its value
	for _, kv := range resp.Kvs {
		k, v := strings.TrimPrefix(string(kv.Key), prefix), kv.Value
		switch {
		case strings.HasPrefix(k, "a/"):
			have["c/agents"]++
		case strings.HasPrefix(k, "p/"):
			have["c/pending"]++
			have["c/P/"+k[2+64:]]++
		case strings.HasPrefix(k, "m/"):
			to, _, _ := strings.Cut(k[2:], "/")
			have["c/m/"+to]++
		case k == "c/agents" || k == "c/pending" || strings.HasPrefix(k, "c/P/") || strings.HasPrefix(k, "c/m/"):
			require.Len(t, v, 16, "count %s", k)
			kept[k] = int(binary.BigEndian.Uint64(v[8:]))
		}
	}
	require.NotZero(t, have["c/agents"], "the servers' records are under %s", prefix)
	require.Equal(t, have, kept)
	t.Logf("etcd counts match the records: %d agents, %d pending requests, %d count keys", have["c/agents"], have["c/pending"], len(kept))
}

func joinComma(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(x)
	}
	return b.String()
}
