package rendezvous_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
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

// checkGoroutines fails the test if, after every cleanup of the test has
// run, the number of goroutines does not settle back to what it was.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := countGoroutines()
	t.Cleanup(func() { // registered first, so it runs last
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := countGoroutines()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutine leak: %d before, %d after\n%s", before, n, buf)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newID(t *testing.T) *trustdb.Identity {
	t.Helper()
	id, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	return id
}

// agent is a test client with its identity and an inbox of delivered
// messages.
type agent struct {
	id    *trustdb.Identity
	c     *rendezvous.Client
	inbox chan *trustdb.Message
}

func inboxFunc(ch chan *trustdb.Message) func(context.Context, []byte) error {
	return func(ctx context.Context, b []byte) error {
		m, err := trustdb.ParseMessage(b)
		if err != nil {
			return err
		}
		if err := m.Verify(); err != nil {
			return err
		}
		select {
		case ch <- m:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func newAgent(t *testing.T, srv *rendezvoustest.Server, id *trustdb.Identity, hostname string) *agent {
	t.Helper()
	if id == nil {
		id = newID(t)
	}
	a := &agent{id: id, inbox: make(chan *trustdb.Message, 64)}
	a.c = srv.NewClient(id, func(cfg *rendezvous.ClientConfig) {
		cfg.Hostname = hostname
		cfg.Deliver = inboxFunc(a.inbox)
	})
	return a
}

func (a *agent) recv(t *testing.T) *trustdb.Message {
	t.Helper()
	select {
	case m := <-a.inbox:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message delivered")
		return nil
	}
}

func (a *agent) noMessage(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-a.inbox:
		t.Fatalf("unexpected message %v", m)
	case <-time.After(d):
	}
}

func msg(t *testing.T, from *trustdb.Identity, kind trustdb.Kind, to addressing.Target, replyTo [trustdb.NonceSize]byte) []byte {
	t.Helper()
	m, err := trustdb.NewMessage(from, kind, to, replyTo, "", "")
	require.NoError(t, err)
	b, err := m.AppendBinary(nil)
	require.NoError(t, err)
	return b
}

func target(t *testing.T, s string) addressing.Target {
	t.Helper()
	tg, err := addressing.ParseTarget(s)
	require.NoError(t, err)
	return tg
}

var noNonce [trustdb.NonceSize]byte

// trust makes a and b trust each other at the server: a requests, b approves.
func trust(t *testing.T, a, b *agent) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, a.c.Send(ctx, msg(t, a.id, trustdb.KindRequest, addressing.TargetAddr(b.id.Addr()), noNonce)))
	req := b.recv(t)
	require.Equal(t, trustdb.KindRequest, req.Kind)
	require.Equal(t, a.id.PublicKey(), req.From)
	require.NoError(t, b.c.Send(ctx, msg(t, b.id, trustdb.KindApprove, addressing.TargetAddr(a.id.Addr()), req.Nonce)))
	ap := a.recv(t)
	require.Equal(t, trustdb.KindApprove, ap.Kind)
	require.Equal(t, req.Nonce, ap.ReplyTo)
}

func TestRegisterLookupTrustedPair(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "bob")
	ctx := ctxT(t)

	self, reflexive := alice.c.Self()
	require.Equal(t, alice.id.Addr(), self)
	require.Equal(t, "127.0.0.1", reflexive.Addr().String())

	// Strangers: not found, either way.
	_, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	_, err = alice.c.Lookup(ctx, addressing.TargetAddr(bob.id.Addr()))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)

	// Self lookup works.
	me, err := alice.c.Lookup(ctx, target(t, "alice"))
	require.NoError(t, err)
	require.Equal(t, alice.id.PublicKey(), me.Key)

	trust(t, alice, bob)

	info, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.NoError(t, err)
	require.Equal(t, bob.id.PublicKey(), info.Key)
	require.Equal(t, bob.id.Addr(), info.Addr)
	require.Equal(t, "bob", info.Hostname)
	require.True(t, info.Online)
	_, bobReflexive := bob.c.Self()
	require.NotEmpty(t, info.Locators)
	require.Equal(t, bobReflexive, info.Locators[0])

	info, err = bob.c.Lookup(ctx, addressing.TargetAddr(alice.id.Addr()))
	require.NoError(t, err)
	require.Equal(t, alice.id.PublicKey(), info.Key)
	require.Equal(t, reflexive, info.Locators[0])

	// Revoke: the pair is gone at once and the peer is told.
	require.NoError(t, bob.c.Send(ctx, msg(t, bob.id, trustdb.KindRevoke, addressing.TargetAddr(alice.id.Addr()), noNonce)))
	rv := alice.recv(t)
	require.Equal(t, trustdb.KindRevoke, rv.Kind)
	_, err = alice.c.Lookup(ctx, target(t, "bob"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
}

// TestRejectNotDeliveredAndNoPair: a rejection reaches the rendezvous (the
// pending request is gone) but never the requester, who must not learn that
// the target exists before it approves.
func TestRejectNotDeliveredAndNoPair(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "bob")
	ctx := ctxT(t)
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	req := bob.recv(t)
	require.NoError(t, bob.c.Send(ctx, msg(t, bob.id, trustdb.KindReject, addressing.TargetAddr(alice.id.Addr()), req.Nonce)))
	alice.noMessage(t, 200*time.Millisecond)
	_, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	// The request is answered: approving it now is refused.
	err = bob.c.Send(ctx, msg(t, bob.id, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), req.Nonce))
	require.ErrorIs(t, err, rendezvous.ErrNoRequest)
}

// rawClient speaks the protocol by hand, to compare answers byte for byte.
type rawClient struct {
	qc      *quic.Conn
	session *quic.Stream // after Register
}

func dialRaw(t *testing.T, srv *rendezvoustest.Server, id *trustdb.Identity, register bool) *rawClient {
	t.Helper()
	tr := rendezvoustest.NewTransport(t)
	cert, err := certs.Certificate(id.PrivateKey())
	require.NoError(t, err)
	qc, err := tr.Dial(ctxT(t), srv.Addr(), certs.ClientConfig(cert, rendezvous.ALPN, srv.PublicKey(), nil), &quic.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	r := &rawClient{qc: qc}
	if register {
		str, err := qc.OpenStreamSync(ctxT(t))
		require.NoError(t, err)
		b, err := proto.AppendMessage(nil, &proto.Register{})
		require.NoError(t, err)
		_, err = str.Write(b)
		require.NoError(t, err)
		str.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := proto.ReadFrame(str, 0)
		require.NoError(t, err)
		require.Equal(t, proto.TypeRegistered, f.Type)
		str.SetReadDeadline(time.Time{})
		r.session = str
	}
	return r
}

// request sends raw bytes on a fresh stream and returns everything the
// server answers.
func (r *rawClient) request(t *testing.T, raw []byte) []byte {
	t.Helper()
	str, err := r.qc.OpenStreamSync(ctxT(t))
	require.NoError(t, err)
	str.SetDeadline(time.Now().Add(5 * time.Second))
	// The server may answer (and stop reading) before everything is
	// written: write and close errors are not the point here.
	_, _ = str.Write(raw)
	_ = str.Close()
	b, err := io.ReadAll(str)
	require.NoError(t, err)
	return b
}

func frame(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.AppendMessage(nil, m)
	require.NoError(t, err)
	return b
}

func TestPrivacySameBytes(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	bob := newAgent(t, srv, nil, "bob")
	strangerID := newID(t)
	stranger := dialRaw(t, srv, strangerID, true)
	nobody := newID(t) // never registered

	notFound := stranger.request(t, frame(t, &proto.Lookup{Target: target(t, "nobody")}))
	require.Equal(t, []byte{proto.Version, byte(proto.TypeNotFound), 0, 0}, notFound)
	for name, tg := range map[string]addressing.Target{
		"private by hostname":      target(t, "bob"),
		"private by address":       addressing.TargetAddr(bob.id.Addr()),
		"private in other network": addressing.TargetAddr(bob.id.Addr().WithNetwork(7)),
		"nonexistent address":      addressing.TargetAddr(nobody.Addr()),
	} {
		got := stranger.request(t, frame(t, &proto.Lookup{Target: tg}))
		require.Equal(t, notFound, got, name)
	}

	// A request: the same OK bytes whether the target exists or not.
	ok := frame(t, &proto.OK{})
	for name, tg := range map[string]addressing.Target{
		"private by hostname": target(t, "bob"),
		"nonexistent name":    target(t, "nobody"),
		"nonexistent address": addressing.TargetAddr(nobody.Addr()),
	} {
		got := stranger.request(t, frame(t, &proto.TrustSend{Msg: msg(t, strangerID, trustdb.KindRequest, tg, noNonce)}))
		require.Equal(t, ok, got, name)
	}
	// Delivered to bob, who learns the stranger's key; the stranger still
	// learns nothing of bob.
	req := bob.recv(t)
	require.Equal(t, strangerID.PublicKey(), req.From)
	bob.noMessage(t, 100*time.Millisecond)
	require.Equal(t, notFound, stranger.request(t, frame(t, &proto.Lookup{Target: target(t, "bob")})))

	// Once bob approves, the stranger sees him.
	require.NoError(t, bob.c.Send(ctxT(t), msg(t, bob.id, trustdb.KindApprove, addressing.TargetAddr(strangerID.Addr()), req.Nonce)))
	got := stranger.request(t, frame(t, &proto.Lookup{Target: target(t, "bob")}))
	f, _, err := proto.ParseFrame(got)
	require.NoError(t, err)
	require.Equal(t, proto.TypeLookupResult, f.Type)
}

func TestRequestByHostnameToPrivateAgent(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "bob")
	ctx := ctxT(t)

	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "nobody-here"), noNonce)))
	req := bob.recv(t)
	require.Equal(t, alice.id.PublicKey(), req.From)
	host, ok := req.To.Hostname()
	require.True(t, ok)
	require.Equal(t, "bob", host)
	// The requester learns no locator until bob approves.
	_, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	require.NoError(t, bob.c.Send(ctx, msg(t, bob.id, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), req.Nonce)))
	require.Equal(t, trustdb.KindApprove, alice.recv(t).Kind)
	info, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.NoError(t, err)
	require.Equal(t, bob.id.PublicKey(), info.Key)
}

func TestReplayAndForgeryRefused(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "bob")
	mallory := newAgent(t, srv, nil, "mallory")
	ctx := ctxT(t)

	req := msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)
	require.NoError(t, alice.c.Send(ctx, req))
	bob.recv(t)

	// Replayed by the sender, or by anyone else.
	require.ErrorIs(t, alice.c.Send(ctx, req), rendezvous.ErrReplay)
	require.ErrorIs(t, mallory.c.Send(ctx, req), rendezvous.ErrBadMessage)

	// Signed by alice, sent by mallory (sender must be the signer).
	forged := msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)
	require.ErrorIs(t, mallory.c.Send(ctx, forged), rendezvous.ErrBadMessage)

	// A flipped bit in the signature.
	tampered := bytes.Clone(forged)
	tampered[len(tampered)-1] ^= 1
	require.ErrorIs(t, alice.c.Send(ctx, tampered), rendezvous.ErrBadMessage)

	// Garbage.
	require.ErrorIs(t, alice.c.Send(ctx, []byte("not a trust message")), rendezvous.ErrBadMessage)

	// Mallory approves alice's request to bob on bob's behalf: no request
	// from alice to mallory.
	m, err := trustdb.ParseMessage(req)
	require.NoError(t, err)
	err = mallory.c.Send(ctx, msg(t, mallory.id, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), m.Nonce))
	require.ErrorIs(t, err, rendezvous.ErrNoRequest)

	// Bob approving with the wrong nonce.
	err = bob.c.Send(ctx, msg(t, bob.id, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), [trustdb.NonceSize]byte{1}))
	require.ErrorIs(t, err, rendezvous.ErrNoRequest)

	bob.noMessage(t, 100*time.Millisecond)
	alice.noMessage(t, 0)
	require.GreaterOrEqual(t, srv.Stats().TrustRefused, uint64(6))
}

func TestMailboxForOfflineAgent(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bobID := newID(t)
	bob := newAgent(t, srv, bobID, "bob")
	require.NoError(t, bob.c.Close()) // registered, now offline
	ctx := ctxT(t)

	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, addressing.TargetAddr(bobID.Addr()), noNonce)))

	// The newer request replaced the older one, queued copy included: a
	// requester cannot fill a mailbox by asking again.
	bob2 := newAgent(t, srv, bobID, "")
	m2 := bob2.recv(t)
	require.Equal(t, alice.id.PublicKey(), m2.From)
	require.Equal(t, addressing.TargetAddr(bobID.Addr()), m2.To)
	bob2.noMessage(t, 100*time.Millisecond)

	// Acked messages are gone: a third connection gets nothing.
	require.Eventually(t, func() bool { return srv.Stats().Acked == 1 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, bob2.c.Close())
	bob3 := newAgent(t, srv, bobID, "")
	bob3.noMessage(t, 300*time.Millisecond)
	// The hostname stayed bound while bob was away.
	require.NoError(t, bob3.c.Send(ctx, msg(t, bobID, trustdb.KindApprove, addressing.TargetAddr(alice.id.Addr()), m2.Nonce)))
	require.Equal(t, trustdb.KindApprove, alice.recv(t).Kind)
	info, err := alice.c.Lookup(ctx, target(t, "bob"))
	require.NoError(t, err)
	require.Equal(t, bobID.PublicKey(), info.Key)
}

func TestDeliverErrorKeepsMessage(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	bobID := newID(t)
	var mu sync.Mutex
	fail := true
	got := make(chan *trustdb.Message, 4)
	deliver := inboxFunc(got)
	bob := srv.NewClient(bobID, func(cfg *rendezvous.ClientConfig) {
		cfg.Hostname = "bob"
		cfg.Deliver = func(ctx context.Context, b []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				fail = false
				return errors.New("disk full")
			}
			return deliver(ctx, b)
		}
	})
	require.NoError(t, alice.c.Send(ctxT(t), msg(t, alice.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, bob.Close())
	bob2 := newAgent(t, srv, bobID, "")
	require.Equal(t, alice.id.PublicKey(), bob2.recv(t).From)
}

func TestRestartKeepsState(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	key := srv.PublicKey()
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "bob")
	trust(t, alice, bob)
	carolID := newID(t)
	carol := newAgent(t, srv, carolID, "carol")
	require.NoError(t, carol.c.Close())
	ctx := ctxT(t)
	// A request queued for offline carol, and one pending to bob.
	require.NoError(t, alice.c.Send(ctx, msg(t, alice.id, trustdb.KindRequest, target(t, "carol"), noNonce)))
	daveID := newID(t)
	dave := newAgent(t, srv, daveID, "dave")
	require.NoError(t, dave.c.Send(ctx, msg(t, daveID, trustdb.KindRequest, target(t, "bob"), noNonce)))
	daveReq := bob.recv(t)

	srv.Restart()
	require.Equal(t, key, srv.PublicKey(), "server identity survives the restart")

	// Clients reconnect by themselves; the pair and hostnames survived.
	require.Eventually(t, func() bool {
		info, err := alice.c.Lookup(ctx, target(t, "bob"))
		return err == nil && info.Key == bob.id.PublicKey() && info.Online
	}, 10*time.Second, 50*time.Millisecond)
	// The pending request survived: bob can approve it now.
	require.Eventually(t, func() bool {
		return bob.c.WaitReady(ctx) == nil && bob.c.Send(ctx, msg(t, bob.id, trustdb.KindApprove, addressing.TargetAddr(daveID.Addr()), daveReq.Nonce)) == nil
	}, 10*time.Second, 50*time.Millisecond)
	require.Equal(t, trustdb.KindApprove, dave.recv(t).Kind)
	// The queued message survived.
	carol2 := newAgent(t, srv, carolID, "")
	m := carol2.recv(t)
	require.Equal(t, alice.id.PublicKey(), m.From)
	// Hostname still bound to carol.
	other := srv.NewClient(nil, nil)
	require.ErrorIs(t, other.SetHostname(ctx, "carol"), rendezvous.ErrHostnameTaken)
}

// TestCrashRestart: the server dies without closing its connections and a
// new one starts on the same port and DataDir. The new server's stateless
// resets (keyed by the server identity) end the clients' stale connections
// at their next packet, far sooner than the 30 s idle timeout.
func TestCrashRestart(t *testing.T) {
	checkGoroutines(t)
	dir := t.TempDir()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Conn: conn, DataDir: dir})
	key := srv.PublicKey()
	alice := newAgent(t, srv, nil, "alice")
	bob := newAgent(t, srv, nil, "bob")
	trust(t, alice, bob)

	addr := conn.LocalAddr().String()
	require.NoError(t, conn.Close()) // the crash: nothing more reaches the clients
	require.NoError(t, srv.Close())
	srv2 := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Addr: addr, DataDir: dir})
	require.Equal(t, key, srv2.PublicKey())

	ctx := ctxT(t)
	start := time.Now()
	// Any packet of a client gets it a reset and it reconnects; an idle one
	// sends its Ping within PingPeriod.
	lookup := func(from *agent, tg addressing.Target) bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		info, err := from.c.Lookup(ctx, tg)
		return err == nil && info.Online
	}
	require.Eventually(t, func() bool {
		a := lookup(alice, target(t, "bob"))
		b := lookup(bob, addressing.TargetAddr(alice.id.Addr()))
		return a && b
	}, 10*time.Second, 20*time.Millisecond)
	t.Logf("clients back after %v", time.Since(start).Round(time.Millisecond))
}

func TestHostnameTaken(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	alice := newAgent(t, srv, nil, "alice")
	ctx := ctxT(t)

	// Registering with a taken hostname is refused.
	c, err := rendezvous.NewClient(func() rendezvous.ClientConfig {
		cfg := srv.ClientConfig(newID(t), rendezvoustest.NewTransport(t))
		cfg.Hostname = "alice"
		return cfg
	}())
	require.NoError(t, err)
	c.Start()
	require.ErrorIs(t, c.WaitReady(ctx), rendezvous.ErrHostnameTaken)
	require.NoError(t, c.Close())
	require.ErrorIs(t, c.WaitReady(ctx), net.ErrClosed)

	bob := newAgent(t, srv, nil, "")
	require.ErrorIs(t, bob.c.SetHostname(ctx, "alice"), rendezvous.ErrHostnameTaken)
	require.NoError(t, bob.c.SetHostname(ctx, "bob"))
	require.NoError(t, bob.c.SetHostname(ctx, "bob"))
	require.NoError(t, alice.c.SetHostname(ctx, "")) // release
	require.NoError(t, bob.c.SetHostname(ctx, "alice"))
	require.ErrorIs(t, alice.c.SetHostname(ctx, "alice"), rendezvous.ErrHostnameTaken)
	// bob's old name is free again.
	require.NoError(t, alice.c.SetHostname(ctx, "bob"))
}

func TestRateLimited(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{KeyRate: 1, KeyBurst: 5}})
	a := newAgent(t, srv, nil, "")
	ctx := ctxT(t)
	var err error
	for range 20 {
		if _, err = a.c.Lookup(ctx, target(t, "x")); errors.Is(err, rendezvous.ErrRateLimited) {
			break
		}
	}
	require.ErrorIs(t, err, rendezvous.ErrRateLimited)
	var se *rendezvous.ServerError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "rate_limited", se.Code.String())
	// Another key is not affected.
	b := newAgent(t, srv, nil, "")
	_, err = b.c.Lookup(ctx, target(t, "x"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
}

func TestMaxAgents(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxAgents: 2}})
	first := newID(t)
	dialRaw(t, srv, first, true)
	dialRaw(t, srv, newID(t), true)
	third := dialRaw(t, srv, newID(t), false)
	got := third.request(t, frame(t, &proto.Register{}))
	require.Equal(t, frame(t, &proto.Error{Code: proto.CodeLimit, Text: "server limit reached: 2 agents registered"}), got, "%q", got)
	// A known key still registers.
	dialRaw(t, srv, first, true)
}

func TestPendingLimitDropsSilently(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxPendingPerTarget: 2}})
	bob := newAgent(t, srv, nil, "bob")
	ctx := ctxT(t)
	for range 3 {
		a := newAgent(t, srv, nil, "")
		require.NoError(t, a.c.Send(ctx, msg(t, a.id, trustdb.KindRequest, target(t, "bob"), noNonce)))
	}
	bob.recv(t)
	bob.recv(t)
	bob.noMessage(t, 200*time.Millisecond)
	require.Equal(t, uint64(1), srv.Stats().RequestsDropped)
}

func TestBadFramesDoNotHurtOthers(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.NewWithConfig(t, rendezvous.ServerConfig{Limits: rendezvous.Limits{MaxFrameSize: 2048}})
	good := newAgent(t, srv, nil, "good")
	bad := dialRaw(t, srv, newID(t), true)

	parseErr := func(b []byte) proto.ErrorCode {
		f, _, err := proto.ParseFrame(b)
		require.NoError(t, err)
		require.Equal(t, proto.TypeError, f.Type)
		e, err := proto.ParseError(f.Body)
		require.NoError(t, err)
		return e.Code
	}
	oversized, err := proto.AppendFrame(nil, proto.TypeLookup, make([]byte, 4000))
	require.NoError(t, err)
	for name, tc := range map[string]struct {
		raw  []byte
		code proto.ErrorCode
	}{
		"oversized":       {oversized, proto.CodeTooLarge},
		"bad version":     {[]byte{9, 3, 0, 0}, proto.CodeBadRequest},
		"truncated body":  {[]byte{1, 3, 0, 9, 1}, proto.CodeBadRequest},
		"malformed body":  {[]byte{1, 3, 0, 1, 7}, proto.CodeBadRequest},
		"unknown type":    {[]byte{1, 0x7e, 0, 0}, proto.CodeBadRequest},
		"server-only msg": {frame(t, &proto.OK{}), proto.CodeBadRequest},
		"second register": {frame(t, &proto.Register{}), proto.CodeBadRequest},
	} {
		require.Equal(t, tc.code, parseErr(bad.request(t, tc.raw)), name)
	}

	// Requests before Register are refused.
	unreg := dialRaw(t, srv, newID(t), false)
	require.Equal(t, proto.CodeNotRegistered, parseErr(unreg.request(t, frame(t, &proto.Lookup{Target: target(t, "good")}))))

	// Garbage on the session stream kills that connection only.
	_, err = bad.session.Write([]byte{1, byte(proto.TypeAck), 0, 1, 0})
	require.NoError(t, err)
	select {
	case <-bad.qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("server kept a connection whose session stream sent garbage")
	}

	// The server still serves everyone else.
	_, err = good.c.Lookup(ctxT(t), target(t, "nobody"))
	require.ErrorIs(t, err, rendezvous.ErrNotFound)
	me, err := good.c.Lookup(ctxT(t), target(t, "good"))
	require.NoError(t, err)
	require.Equal(t, "good", me.Hostname)
	require.GreaterOrEqual(t, srv.Stats().BadFrames, uint64(6))
}

func TestPinning(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	ctx := ctxT(t)
	pins := &memPins{}

	// Trust on first use: the key is pinned.
	cfg := srv.ClientConfig(newID(t), rendezvoustest.NewTransport(t))
	cfg.ServerKey = addressing.PublicKey{}
	cfg.Pins = pins
	c, err := rendezvous.NewClient(cfg)
	require.NoError(t, err)
	c.Start()
	require.NoError(t, c.WaitReady(ctx))
	k, ok := pins.Pin()
	require.True(t, ok)
	require.Equal(t, srv.PublicKey(), k)
	require.NoError(t, c.Close())

	// Pinned: a restarted server with the same DataDir has the same key.
	srv.Restart()
	cfg.Transport = rendezvoustest.NewTransport(t)
	c2, err := rendezvous.NewClient(cfg)
	require.NoError(t, err)
	c2.Start()
	require.NoError(t, c2.WaitReady(ctx))
	require.NoError(t, c2.Close())

	// A different key than the pinned one (or the configured one): refused,
	// and WaitReady says why.
	require.NoError(t, pins.SetPin(newID(t).PublicKey()))
	for _, configured := range []bool{false, true} {
		cfg := cfg
		cfg.Transport = rendezvoustest.NewTransport(t)
		if configured {
			cfg.ServerKey, cfg.Pins = newID(t).PublicKey(), nil
		}
		c3, err := rendezvous.NewClient(cfg)
		require.NoError(t, err)
		c3.Start()
		require.ErrorIs(t, c3.WaitReady(ctx), rendezvous.ErrServerKey)
		require.NoError(t, c3.Close())
	}
}

type memPins struct {
	mu  sync.Mutex
	key addressing.PublicKey
	set bool
}

func (p *memPins) Pin() (addressing.PublicKey, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.key, p.set
}

func (p *memPins) SetPin(k addressing.PublicKey) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.key, p.set = k, true
	return nil
}

// TestPinIsPerNode: the pin belongs to the node, not to the server's address
// string. A node that pinned its rendezvous as 127.0.0.1:port refuses another
// key under another name (localhost:port2), until the user configures that
// key explicitly. (Before, each address string had its own pin, so the
// alias silently trusted the imposter's key on first use.)
func TestPinIsPerNode(t *testing.T) {
	checkGoroutines(t)
	srv := rendezvoustest.New(t)
	imposter := rendezvoustest.New(t)
	ctx := ctxT(t)
	pins := &memPins{}
	id := newID(t)
	run := func(addr string, key addressing.PublicKey) error {
		t.Helper()
		c, err := rendezvous.NewClient(rendezvous.ClientConfig{
			Identity: id, Transport: rendezvoustest.NewTransport(t), ServerAddr: addr, ServerKey: key, Pins: pins,
		})
		require.NoError(t, err)
		defer c.Close()
		c.Start()
		return c.WaitReady(ctx)
	}
	require.NoError(t, run(srv.Addr().String(), addressing.PublicKey{}))
	k, ok := pins.Pin()
	require.True(t, ok)
	require.Equal(t, srv.PublicKey(), k)

	alias := fmt.Sprintf("localhost:%d", imposter.Addr().Port)
	err := run(alias, addressing.PublicKey{})
	require.ErrorIs(t, err, rendezvous.ErrServerKey)
	require.Contains(t, err.Error(), imposter.PublicKey().String())
	require.Contains(t, err.Error(), "configure the new key explicitly")
	t.Log(err)
	k, _ = pins.Pin()
	require.Equal(t, srv.PublicKey(), k, "the pin is unchanged")
	// The same server under another name is still fine.
	require.NoError(t, run(fmt.Sprintf("localhost:%d", srv.Addr().Port), addressing.PublicKey{}))

	// The user changes the pin explicitly: the configured key is pinned, and
	// from then on the old server is the stranger.
	require.NoError(t, run(alias, imposter.PublicKey()))
	k, _ = pins.Pin()
	require.Equal(t, imposter.PublicKey(), k)
	require.ErrorIs(t, run(srv.Addr().String(), addressing.PublicKey{}), rendezvous.ErrServerKey)
}

func TestCloseAndShutdown(t *testing.T) {
	checkGoroutines(t)
	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{Addr: "127.0.0.1:0"})
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	require.Error(t, srv.Start())
	require.NoError(t, srv.Shutdown(ctxT(t)))
	require.NoError(t, srv.Close())
	srv2, err := rendezvous.NewServer(rendezvous.ServerConfig{})
	require.NoError(t, err)
	require.NoError(t, srv2.Close())
	require.ErrorIs(t, srv2.Start(), net.ErrClosed)

	// Client calls after Close.
	rs := rendezvoustest.New(t)
	c := rs.NewClient(nil, nil)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	_, err = c.Lookup(ctxT(t), target(t, "x"))
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorIs(t, c.Send(ctxT(t), []byte{1}), net.ErrClosed)
}
