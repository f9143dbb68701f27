package rendezvous_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// transportFrom returns a QUIC transport on a UDP socket bound to ip, any
// address of 127.0.0.0/8 (all of it is local on Linux), closed in Cleanup.
func transportFrom(t testing.TB, ip string) *quic.Transport {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	require.NoError(t, err)
	tr := &quic.Transport{Conn: conn}
	t.Cleanup(func() {
		tr.Close()
		conn.Close()
	})
	return tr
}

// floodClient is a registered raw connection for goroutines (errors, not
// require).
type floodClient struct {
	id *trustdb.Identity
	qc *quic.Conn
}

func dialFlood(ctx context.Context, srv *rendezvoustest.Server, tr *quic.Transport) (*floodClient, error) {
	id, err := trustdb.GenerateIdentity()
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		qc, err := registerFlood(ctx, srv, tr, id)
		// A burst of handshakes can overflow quic-go's accept queue (32):
		// refused, the client tries again, like a real one.
		var te *quic.TransportError
		if errors.As(err, &te) && te.ErrorCode == quic.ConnectionRefused && try < 50 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			return nil, err
		}
		return &floodClient{id: id, qc: qc}, nil
	}
}

func registerFlood(ctx context.Context, srv *rendezvoustest.Server, tr *quic.Transport, id *trustdb.Identity) (*quic.Conn, error) {
	cert, err := certs.Certificate(id.PrivateKey())
	if err != nil {
		return nil, err
	}
	qc, err := tr.Dial(ctx, srv.Addr(), certs.ClientConfig(cert, rendezvous.ALPN, srv.PublicKey(), nil), &quic.Config{})
	if err != nil {
		return nil, err
	}
	str, err := qc.OpenStreamSync(ctx)
	if err == nil {
		b, _ := proto.AppendMessage(nil, &proto.Register{})
		_, err = str.Write(b)
	}
	var f proto.Frame
	if err == nil {
		str.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err = proto.ReadFrame(str, 0)
	}
	if err == nil && f.Type != proto.TypeRegistered {
		err = fmt.Errorf("register: %s", f.Type)
	}
	if err != nil {
		qc.CloseWithError(0, "")
		return nil, err
	}
	return qc, nil
}

// request sends a fresh trust request to tg and returns the answer's bytes.
func (c *floodClient) request(ctx context.Context, tg addressing.Target) ([]byte, error) {
	m, err := trustdb.NewMessage(c.id, trustdb.KindRequest, tg, [trustdb.NonceSize]byte{}, "", "")
	if err != nil {
		return nil, err
	}
	raw, err := m.AppendBinary(nil)
	if err != nil {
		return nil, err
	}
	b, _ := proto.AppendMessage(nil, &proto.TrustSend{Msg: raw})
	str, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	str.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = str.Write(b)
	_ = str.Close()
	return io.ReadAll(str)
}

// TestTrustRequestFloodFairSockets: throwaway keys on real connections from
// 10 source prefixes (127.0.1.0/24 … 127.0.10.0/24, ten addresses each, two
// keys per address: 200 keys, more than the 64 slots) flood an offline
// agent's pending slots, before and after a legitimate request from an
// eleventh prefix, and every key asks again. The legitimate request keeps
// its slot, reaches the agent when it comes online, and the agent can
// approve it; no attacking prefix holds more than its share. The server
// groups the sources by the addresses it sees. (TestTrustRequestFlood1000Keys
// runs the 1000-key attack on the same logic without 1000 handshakes.)
// Before, the first 64 requests took every slot and the legitimate one was
// acknowledged and dropped.
func TestTrustRequestFloodFairSockets(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	bobID := newID(t)
	bob := newAgent(t, srv, bobID, "bob")
	require.NoError(t, bob.c.Close()) // offline: the requests wait in the mailbox
	ctx := ctxT(t)
	okFrame := frame(t, &proto.OK{})
	tg := target(t, "bob")

	const prefixes, addrs = 10, 10
	keysPerAddr := 2
	if rendezvoustest.StoreFunc != nil {
		// On the etcd store (TestSuiteOnEtcd) every request to bob is a raft
		// commit on the same mailbox, one after the other: one key per
		// address, 100 keys, still more than the 64 slots.
		keysPerAddr = 1
	}
	var mu sync.Mutex
	var attackers []*floodClient
	source := make(map[addressing.PublicKey]int) // key → prefix
	attack := func(wave string, fresh bool) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, prefixes*addrs)
		for p := 1; p <= prefixes; p++ {
			for a := 1; a <= addrs; a++ {
				var tr *quic.Transport
				if fresh {
					tr = transportFrom(t, fmt.Sprintf("127.0.%d.%d", p, a))
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []*floodClient
					if fresh {
						for range keysPerAddr {
							c, err := dialFlood(ctx, srv, tr)
							if err != nil {
								errs <- err
								return
							}
							mine = append(mine, c)
						}
						mu.Lock()
						attackers = append(attackers, mine...)
						for _, c := range mine {
							source[c.id.PublicKey()] = p
						}
						mu.Unlock()
					} else {
						mu.Lock()
						for _, c := range attackers {
							if source[c.id.PublicKey()] == p && c.qc.LocalAddr().(*net.UDPAddr).IP.To4()[3] == byte(a) {
								mine = append(mine, c)
							}
						}
						mu.Unlock()
					}
					for _, c := range mine {
						got, err := c.request(ctx, tg)
						if err == nil && string(got) != string(okFrame) {
							err = fmt.Errorf("answer %x", got)
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err, "%s: %+v", wave, srv.Stats())
		}
	}

	attack("first wave", true)
	require.Len(t, attackers, prefixes*addrs*keysPerAddr)
	alice, err := dialFlood(ctx, srv, transportFrom(t, "127.0.11.1"))
	require.NoError(t, err)
	got, err := alice.request(ctx, tg)
	require.NoError(t, err)
	require.Equal(t, okFrame, got)
	attack("every key again", false)
	st := srv.Stats()
	t.Logf("dropped %d, evicted %d", st.RequestsDropped, st.RequestsEvicted)
	require.NotZero(t, st.RequestsDropped, "the flood was over the slots")

	// bob comes online: his slots' requests arrive, alice's among them.
	bob = newAgent(t, srv, bobID, "bob")
	perPrefix := make(map[int]int)
	var fromAlice *trustdb.Message
	for range rendezvous.DefaultMaxPendingPerTarget {
		m := bob.recv(t)
		if m.From == alice.id.PublicKey() {
			fromAlice = m
			continue
		}
		p, ok := source[m.From]
		require.True(t, ok)
		perPrefix[p]++
	}
	bob.noMessage(t, 200*time.Millisecond)
	require.NotNil(t, fromAlice, "the legitimate request reached its target")
	share := (rendezvous.DefaultMaxPendingPerTarget - 1 + prefixes - 1) / prefixes
	for p, n := range perPrefix {
		require.LessOrEqual(t, n, share+1, "prefix %d holds more than its share", p)
	}
	t.Logf("slots per attacking prefix: %v", perPrefix)

	// And bob can approve it: the server kept it pending.
	require.NoError(t, bob.c.Send(ctx, msg(t, bobID, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), fromAlice.Nonce)))
}
