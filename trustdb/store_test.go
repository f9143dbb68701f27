package trustdb

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func openTestStore(tb testing.TB) *Store {
	tb.Helper()
	s, err := Open(filepath.Join(tb.TempDir(), "trust"))
	require.NoError(tb, err)
	tb.Cleanup(func() { s.Close() })
	return s
}

// peerMsg makes a message from id at time at.
func peerMsg(tb testing.TB, id *Identity, kind Kind, to addressing.Target, replyTo [NonceSize]byte, hostname string, at time.Time) *Message {
	tb.Helper()
	m, err := newMessageAt(id, kind, to, replyTo, hostname, "note from "+id.NodeID().String(), at)
	require.NoError(tb, err)
	return m
}

// testEnv is the state one state-machine scenario runs in.
type testEnv struct {
	s        *Store
	peer     *Identity // the peer under test
	other    *Identity // someone else
	clock    time.Time // the peer's clock; advanced by each message
	ourReq   *Message  // the last request we sent
	peerReq  *Message  // the last request the peer sent
	lastRecv *Message  // the last message handed to HandleMessage
}

func (e *testEnv) tick() time.Time {
	e.clock = e.clock.Add(time.Second)
	return e.clock
}

func (e *testEnv) ourAddr() addressing.Target { return addressing.TargetAddr(e.s.Identity().Addr()) }

func (e *testEnv) handle(tb testing.TB, m *Message) error {
	e.lastRecv = m
	_, err := e.s.HandleMessage(m, "me")
	return err
}

// Steps.
func peerRequests(tb testing.TB, e *testEnv) error {
	e.peerReq = peerMsg(tb, e.peer, KindRequest, e.ourAddr(), [NonceSize]byte{}, "peer", e.tick())
	return e.handle(tb, e.peerReq)
}

func peerRequestsByHostname(tb testing.TB, e *testEnv) error {
	e.peerReq = peerMsg(tb, e.peer, KindRequest, mustTarget(tb, "me"), [NonceSize]byte{}, "peer", e.tick())
	return e.handle(tb, e.peerReq)
}

func weRequestAddr(tb testing.TB, e *testEnv) error {
	m, err := e.s.Request(addressing.TargetAddr(e.peer.Addr()), "me", "hello")
	e.ourReq = m
	return err
}

func weRequestHostname(tb testing.TB, e *testEnv) error {
	m, err := e.s.Request(mustTarget(tb, "peer"), "me", "hello")
	e.ourReq = m
	return err
}

func peerAnswers(kind Kind) func(testing.TB, *testEnv) error {
	return func(tb testing.TB, e *testEnv) error {
		return e.handle(tb, peerMsg(tb, e.peer, kind, e.ourAddr(), e.ourReq.Nonce, "peer", e.tick()))
	}
}

func peerRevokes(tb testing.TB, e *testEnv) error {
	return e.handle(tb, peerMsg(tb, e.peer, KindRevoke, e.ourAddr(), [NonceSize]byte{}, "", e.tick()))
}

func local(op func(*Store, addressing.PublicKey, string) (*Message, error)) func(testing.TB, *testEnv) error {
	return func(tb testing.TB, e *testEnv) error {
		_, err := op(e.s, e.peer.PublicKey(), "me")
		return err
	}
}

var (
	weApprove = local((*Store).Approve)
	weReject  = local((*Store).Reject)
	weRevoke  = local((*Store).Revoke)
)

func replayLast(tb testing.TB, e *testEnv) error { return e.handle(tb, e.lastRecv) }

type smStep struct {
	name    string
	do      func(testing.TB, *testEnv) error
	fails   bool  // the step must fail
	wantErr error // if not nil, the error wraps it
	want    State // the peer key's record state afterwards (0: none)
	// wantPending is the number of pending-out records afterwards.
	wantPending int
}

func TestStateMachine(t *testing.T) {
	ok := func(name string, do func(testing.TB, *testEnv) error, want State) smStep {
		return smStep{name: name, do: do, want: want}
	}
	fail := func(name string, do func(testing.TB, *testEnv) error, err error, want State) smStep {
		return smStep{name: name, do: do, fails: true, wantErr: err, want: want}
	}
	pend := func(s smStep, n int) smStep { s.wantPending = n; return s }

	scenarios := []struct {
		name  string
		steps []smStep
	}{
		{"request in, approve, revoke", []smStep{
			ok("peer requests", peerRequests, StatePendingIn),
			ok("we approve", weApprove, StateTrusted),
			fail("approve again", weApprove, ErrUnexpected, StateTrusted),
			ok("we revoke", weRevoke, StateRevoked),
			fail("revoke again", weRevoke, ErrUnexpected, StateRevoked),
		}},
		{"request in by hostname, reject", []smStep{
			ok("peer requests", peerRequestsByHostname, StatePendingIn),
			ok("we reject", weReject, StateRejected),
			fail("approve after reject", weApprove, ErrUnexpected, StateRejected),
		}},
		{"our request by address approved, then peer revokes", []smStep{
			pend(ok("we request", weRequestAddr, 0), 1),
			ok("peer approves", peerAnswers(KindApprove), StateTrusted),
			fail("approve replayed", replayLast, ErrReplay, StateTrusted),
			ok("peer revokes", peerRevokes, StateRevoked),
			fail("revoke replayed", replayLast, ErrReplay, StateRevoked),
		}},
		{"our request by hostname rejected", []smStep{
			pend(ok("we request", weRequestHostname, 0), 1),
			ok("peer rejects", peerAnswers(KindReject), StateRejected),
			fail("answer again", peerAnswers(KindApprove), ErrUnexpected, StateRejected),
		}},
		{"request from trusted peer stays trusted", []smStep{
			ok("peer requests", peerRequests, StatePendingIn),
			ok("we approve", weApprove, StateTrusted),
			ok("peer requests again", peerRequests, StateTrusted),
		}},
		{"request from revoked or rejected peer needs fresh consent", []smStep{
			ok("peer requests", peerRequests, StatePendingIn),
			ok("we approve", weApprove, StateTrusted),
			ok("peer revokes", peerRevokes, StateRevoked),
			ok("peer requests again", peerRequests, StatePendingIn),
			ok("we reject", weReject, StateRejected),
			ok("peer requests once more", peerRequests, StatePendingIn),
			ok("we revoke the request", weRevoke, StateRevoked),
		}},
		{"replayed request refused", []smStep{
			ok("peer requests", peerRequests, StatePendingIn),
			ok("we approve", weApprove, StateTrusted),
			ok("we revoke", weRevoke, StateRevoked),
			fail("old request replayed", func(tb testing.TB, e *testEnv) error { return e.handle(tb, e.peerReq) }, ErrReplay, StateRevoked),
		}},
		{"older message refused", []smStep{
			ok("peer requests", peerRequests, StatePendingIn),
			fail("request from before", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, e.ourAddr(), [NonceSize]byte{}, "", e.clock.Add(-time.Millisecond)))
			}, ErrReplay, StatePendingIn),
			fail("request at the same time", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, e.ourAddr(), [NonceSize]byte{}, "", e.clock))
			}, ErrReplay, StatePendingIn),
		}},
		{"forged signature refused", []smStep{
			fail("request signed by someone else", func(tb testing.TB, e *testEnv) error {
				m := peerMsg(tb, e.other, KindRequest, e.ourAddr(), [NonceSize]byte{}, "", e.tick())
				m.From = e.peer.PublicKey()
				return e.handle(tb, m)
			}, ErrBadSignature, 0),
			ok("peer requests", peerRequests, StatePendingIn),
			ok("we approve", weApprove, StateTrusted),
			fail("forged revoke", func(tb testing.TB, e *testEnv) error {
				m := peerMsg(tb, e.peer, KindRevoke, e.ourAddr(), [NonceSize]byte{}, "", e.tick())
				m.Note = "tampered"
				return e.handle(tb, m)
			}, ErrBadSignature, StateTrusted),
		}},
		{"wrong recipient refused", []smStep{
			fail("to another address", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, addressing.TargetAddr(e.other.Addr()), [NonceSize]byte{}, "", e.tick()))
			}, ErrNotForUs, 0),
			fail("to another hostname", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, mustTarget(tb, "someone"), [NonceSize]byte{}, "", e.tick()))
			}, ErrNotForUs, 0),
			fail("to a hostname when we have none", func(tb testing.TB, e *testEnv) error {
				_, err := e.s.HandleMessage(peerMsg(tb, e.peer, KindRequest, mustTarget(tb, "me"), [NonceSize]byte{}, "", e.tick()), "")
				return err
			}, ErrNotForUs, 0),
			ok("our NodeID in another network is us", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, addressing.TargetAddr(e.s.Identity().Addr().WithNetwork(3)), [NonceSize]byte{}, "", e.tick()))
			}, StatePendingIn),
		}},
		{"approve without our request refused", []smStep{
			fail("unsolicited approve", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindApprove, e.ourAddr(), nonce(7), "", e.tick()))
			}, ErrUnexpected, 0),
			pend(ok("we request", weRequestAddr, 0), 1),
			pend(fail("approve of another nonce", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindApprove, e.ourAddr(), nonce(7), "", e.tick()))
			}, ErrUnexpected, 0), 1),
		}},
		{"approve from a key that does not match the address asked for", []smStep{
			pend(ok("we request", weRequestAddr, 0), 1),
			pend(fail("other approves our request", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.other, KindApprove, e.ourAddr(), e.ourReq.Nonce, "", e.tick()))
			}, ErrUnexpected, 0), 1),
			pend(fail("other rejects our request", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.other, KindReject, e.ourAddr(), e.ourReq.Nonce, "", e.tick()))
			}, ErrUnexpected, 0), 1),
			ok("the real peer approves", peerAnswers(KindApprove), StateTrusted),
		}},
		{"revoke from a peer with no record", []smStep{
			fail("revoke in", peerRevokes, ErrUnexpected, 0),
			fail("local revoke", weRevoke, ErrUnexpected, 0),
			fail("local approve", weApprove, ErrUnexpected, 0),
			fail("local reject", weReject, ErrUnexpected, 0),
		}},
		{"message times out of range", []smStep{
			fail("too old", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, e.ourAddr(), [NonceSize]byte{}, "", time.Now().Add(-MaxMessageAge-time.Minute)))
			}, ErrExpired, 0),
			fail("from the future", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, e.ourAddr(), [NonceSize]byte{}, "", time.Now().Add(MaxClockSkew+time.Minute)))
			}, ErrExpired, 0),
			ok("a bit in the future is fine", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.peer, KindRequest, e.ourAddr(), [NonceSize]byte{}, "", time.Now().Add(MaxClockSkew-time.Minute)))
			}, StatePendingIn),
		}},
		{"message from ourselves", []smStep{
			fail("our own request", func(tb testing.TB, e *testEnv) error {
				return e.handle(tb, peerMsg(tb, e.s.Identity(), KindRequest, e.ourAddr(), [NonceSize]byte{}, "", e.tick()))
			}, ErrUnexpected, 0),
			fail("request to ourselves", func(tb testing.TB, e *testEnv) error {
				_, err := e.s.Request(e.ourAddr(), "", "")
				return err
			}, nil, 0),
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			e := &testEnv{s: openTestStore(t), peer: newTestIdentity(t), other: newTestIdentity(t), clock: time.Now().Add(-time.Hour)}
			for _, st := range sc.steps {
				beforeList, beforeOutbox := e.s.List(), e.s.Outbox()
				err := st.do(t, e)
				switch {
				case !st.fails:
					require.NoError(t, err, st.name)
				default:
					require.Error(t, err, st.name)
					if st.wantErr != nil {
						require.ErrorIs(t, err, st.wantErr, st.name)
					}
					require.Equal(t, beforeList, e.s.List(), "%s: a failure changes nothing", st.name)
					require.Equal(t, beforeOutbox, e.s.Outbox(), "%s: a failure queues nothing", st.name)
				}
				r, found := e.s.Get(e.peer.PublicKey())
				if st.want == 0 {
					require.False(t, found, "%s: record %v", st.name, r)
				} else {
					require.True(t, found, st.name)
					require.Equal(t, st.want, r.State, st.name)
					require.Equal(t, e.peer.PublicKey(), r.Key)
				}
				require.Equal(t, st.want == StateTrusted, e.s.IsTrusted(e.peer.PublicKey()), st.name)
				require.False(t, e.s.IsTrusted(e.other.PublicKey()), st.name)
				pending := 0
				for _, r := range e.s.List() {
					if r.State == StatePendingOut {
						pending++
					}
				}
				require.Equal(t, st.wantPending, pending, "%s: pending-out records", st.name)
			}
		})
	}
}

// TestOutboxMessages checks each local action queues exactly its signed
// message, addressed correctly, in the same step.
func TestOutboxMessages(t *testing.T) {
	s := openTestStore(t)
	peer := newTestIdentity(t)
	e := &testEnv{s: s, peer: peer, clock: time.Now().Add(-time.Minute)}
	require.NoError(t, peerRequests(t, e))
	require.Empty(t, s.Outbox())

	approve, err := s.Approve(peer.PublicKey(), "me")
	require.NoError(t, err)
	require.NoError(t, peerRequests(t, e)) // a trusted peer asks again: answered
	revoke, err := s.Revoke(peer.PublicKey(), "")
	require.NoError(t, err)
	req, err := s.Request(mustTarget(t, "bob"), "me", "hi bob")
	require.NoError(t, err)

	out := s.Outbox()
	require.Len(t, out, 4)
	var msgs []*Message
	for i, it := range out {
		if i > 0 {
			require.Greater(t, it.ID, out[i-1].ID)
		}
		m, err := ParseMessage(it.Msg)
		require.NoError(t, err)
		require.NoError(t, m.Verify())
		require.Equal(t, s.Identity().PublicKey(), m.From)
		if i > 0 {
			require.True(t, m.Time.After(msgs[i-1].Time), "our message times strictly increase")
		}
		msgs = append(msgs, m)
	}
	require.Equal(t, approve.Nonce, msgs[0].Nonce)
	require.Equal(t, KindApprove, msgs[1].Kind)
	require.Equal(t, e.peerReq.Nonce, msgs[1].ReplyTo, "the automatic approve answers the new request")
	require.Equal(t, addressing.TargetAddr(peer.Addr()), msgs[1].To)
	require.Equal(t, revoke.Nonce, msgs[2].Nonce)
	require.Equal(t, KindRevoke, msgs[2].Kind)
	require.Equal(t, req.Nonce, msgs[3].Nonce)
	require.Equal(t, "hi bob", msgs[3].Note)

	require.NoError(t, s.AckOutbox(out[1].ID))
	require.NoError(t, s.AckOutbox(out[1].ID), "acking twice is fine")
	require.NoError(t, s.AckOutbox(12345))
	require.Len(t, s.Outbox(), 3)
}

func TestOutboxFull(t *testing.T) {
	s := openTestStore(t)
	s.mu.Lock()
	s.outboxLen = MaxOutbox - 1
	s.mu.Unlock()
	_, err := s.Request(mustTarget(t, "a"), "", "")
	require.NoError(t, err)
	before := s.List()
	_, err = s.Request(mustTarget(t, "b"), "", "")
	require.ErrorIs(t, err, ErrOutboxFull)
	require.Equal(t, before, s.List())
}

func TestSubscribe(t *testing.T) {
	s := openTestStore(t)
	peers := []*Identity{newTestIdentity(t), newTestIdentity(t), newTestIdentity(t)}

	var mu sync.Mutex
	var got []Event
	var calls atomic.Int32
	cancelA := s.Subscribe(func(ev Event) {
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
		// Callbacks may read the store, and see the committed change.
		if !ev.Key.IsZero() {
			r, ok := s.Get(ev.Key)
			require.True(t, ok)
			_ = r
		}
	})
	defer cancelA()
	cancelB := s.Subscribe(func(Event) { calls.Add(1) })

	var want []Event
	expect := func(k addressing.PublicKey, old, now State) {
		want = append(want, Event{Key: k, Old: old, Record: Record{State: now}})
	}
	clock := time.Now().Add(-time.Hour)
	for _, p := range peers {
		clock = clock.Add(time.Second)
		_, err := s.HandleMessage(peerMsg(t, p, KindRequest, addressing.TargetAddr(s.Identity().Addr()), [NonceSize]byte{}, "", clock), "")
		require.NoError(t, err)
		expect(p.PublicKey(), 0, StatePendingIn)
	}
	_, err := s.Approve(peers[0].PublicKey(), "")
	require.NoError(t, err)
	expect(peers[0].PublicKey(), StatePendingIn, StateTrusted)
	s.Flush()
	require.Equal(t, int32(4), calls.Load(), "Flush waits for delivery")
	cancelB()
	_, err = s.Reject(peers[1].PublicKey(), "")
	require.NoError(t, err)
	expect(peers[1].PublicKey(), StatePendingIn, StateRejected)
	req, err := s.Request(addressing.TargetAddr(peers[2].Addr()), "", "")
	require.NoError(t, err)
	expect(addressing.PublicKey{}, 0, StatePendingOut)
	clock = clock.Add(time.Second)
	_, err = s.HandleMessage(peerMsg(t, peers[2], KindApprove, addressing.TargetAddr(s.Identity().Addr()), req.Nonce, "", clock), "")
	require.NoError(t, err)
	expect(peers[2].PublicKey(), StatePendingIn, StateTrusted)
	_, err = s.Revoke(peers[0].PublicKey(), "")
	require.NoError(t, err)
	expect(peers[0].PublicKey(), StateTrusted, StateRevoked)

	// A failure produces no event.
	_, err = s.Approve(peers[0].PublicKey(), "")
	require.ErrorIs(t, err, ErrUnexpected)

	require.NoError(t, s.Close()) // delivers everything committed, then returns
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].Key, got[i].Key, "event %d", i)
		require.Equal(t, want[i].Old, got[i].Old, "event %d", i)
		require.Equal(t, want[i].Record.State, got[i].Record.State, "event %d", i)
	}
	require.Equal(t, int32(4), calls.Load(), "a cancelled subscriber is not called again")
}

// TestSubscribeReentrant checks a callback may write to the store (an
// auto-approve policy), and the events still come in commit order.
func TestSubscribeReentrant(t *testing.T) {
	s := openTestStore(t)
	var mu sync.Mutex
	var states []State
	done := make(chan struct{})
	s.Subscribe(func(ev Event) {
		mu.Lock()
		states = append(states, ev.Record.State)
		mu.Unlock()
		if ev.Record.State == StatePendingIn {
			_, err := s.Approve(ev.Key, "")
			require.NoError(t, err)
		}
		if ev.Record.State == StateTrusted {
			close(done)
		}
	})
	peer := newTestIdentity(t)
	_, err := s.HandleMessage(peerMsg(t, peer, KindRequest, addressing.TargetAddr(s.Identity().Addr()), [NonceSize]byte{}, "", time.Now()), "")
	require.NoError(t, err)
	<-done
	require.True(t, s.IsTrusted(peer.PublicKey()))
	mu.Lock()
	require.Equal(t, []State{StatePendingIn, StateTrusted}, states)
	mu.Unlock()
}

// TestCloseWaitsForCallbacks checks Close returns only after the running
// callback has finished, and that events committed before Close are still
// delivered.
func TestCloseWaitsForCallbacks(t *testing.T) {
	s := openTestStore(t)
	entered := make(chan struct{})
	release := make(chan struct{})
	var mu sync.Mutex
	var n int
	var finished bool
	s.Subscribe(func(Event) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		mu.Lock()
		finished = true
		mu.Unlock()
	})
	for _, h := range []string{"a", "b", "c"} {
		_, err := s.Request(mustTarget(t, h), "", "")
		require.NoError(t, err)
	}
	<-entered
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a callback was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-closed)
	mu.Lock()
	defer mu.Unlock()
	require.True(t, finished)
	require.Equal(t, 3, n, "events committed before Close are delivered")
}

func TestReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trust")
	s, err := Open(dir)
	require.NoError(t, err)
	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())

	peer, stranger := newTestIdentity(t), newTestIdentity(t)
	e := &testEnv{s: s, peer: peer, clock: time.Now().Add(-time.Hour)}
	require.NoError(t, peerRequests(t, e))
	require.NoError(t, weApprove(t, e))
	_, err = s.Request(mustTarget(t, "carol"), "me", "hi")
	require.NoError(t, err)
	require.NoError(t, s.SetMeta("rendezvous_key", []byte("pinned")))
	require.NoError(t, s.SetMeta("gone", []byte("x")))
	require.NoError(t, s.SetMeta("gone", nil))
	last := e.peerReq

	list, outbox, id := s.List(), s.Outbox(), s.Identity().PublicKey()
	require.Len(t, list, 2)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")

	s2, err := Open(dir)
	require.NoError(t, err)
	defer s2.Close()
	require.Equal(t, id, s2.Identity().PublicKey())
	require.Equal(t, list, s2.List())
	require.Equal(t, outbox, s2.Outbox())
	require.True(t, s2.IsTrusted(peer.PublicKey()))
	require.False(t, s2.IsTrusted(stranger.PublicKey()))
	require.Equal(t, []addressing.PublicKey{peer.PublicKey()}, s2.TrustedKeys())
	v, ok := s2.Meta("rendezvous_key")
	require.True(t, ok)
	require.Equal(t, []byte("pinned"), v)
	_, ok = s2.Meta("gone")
	require.False(t, ok)
	// The replay guard survives the restart.
	_, err = s2.HandleMessage(last, "me")
	require.ErrorIs(t, err, ErrReplay)
	// Our message clock survives too.
	m, err := s2.Revoke(peer.PublicKey(), "")
	require.NoError(t, err)
	lastOut, err := ParseMessage(outbox[len(outbox)-1].Msg)
	require.NoError(t, err)
	require.True(t, m.Time.After(lastOut.Time))
}

func TestSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)
	defer s.Close()
	start := time.Now()
	_, err = Open(dir)
	require.ErrorIs(t, err, ErrInUse)
	require.ErrorContains(t, err, "trust store "+filepath.Join(dir, DatabaseFile)+" is in use by another process")
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestOpenRefusesOtherIdentity(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	other, err := GenerateIdentity()
	require.NoError(t, err)
	keyPath := filepath.Join(dir, IdentityFile)
	require.NoError(t, os.Remove(keyPath))
	require.NoError(t, writeKeyFile(keyPath, encodeKeyFile(other)))
	_, err = Open(dir)
	require.ErrorIs(t, err, ErrDamaged)
	require.ErrorContains(t, err, "belongs to identity")
}

func TestOpenRefusesWideKeyFile(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, os.Chmod(filepath.Join(dir, IdentityFile), 0o644))
	_, err = Open(dir)
	require.ErrorContains(t, err, "0644")
}

func TestClosedStore(t *testing.T) {
	s := openTestStore(t)
	peer := newTestIdentity(t)
	e := &testEnv{s: s, peer: peer, clock: time.Now()}
	require.NoError(t, peerRequests(t, e))
	require.NoError(t, weApprove(t, e))
	require.True(t, s.IsTrusted(peer.PublicKey()))
	require.NoError(t, s.Close())

	require.False(t, s.IsTrusted(peer.PublicKey()), "fail closed")
	_, ok := s.Get(peer.PublicKey())
	require.False(t, ok)
	require.Empty(t, s.List())
	require.Empty(t, s.Outbox())
	_, ok = s.Meta("x")
	require.False(t, ok)
	cancel := s.Subscribe(func(Event) { t.Error("called after Close") })
	cancel()

	errs := []error{
		func() error { _, err := s.Request(mustTarget(t, "x"), "", ""); return err }(),
		func() error { _, err := s.Approve(peer.PublicKey(), ""); return err }(),
		func() error { _, err := s.Reject(peer.PublicKey(), ""); return err }(),
		func() error { _, err := s.Revoke(peer.PublicKey(), ""); return err }(),
		func() error { return peerRequests(t, e) }(),
		s.AckOutbox(1),
		s.SetMeta("x", []byte("y")),
	}
	for i, err := range errs {
		require.ErrorIs(t, err, net.ErrClosed, "call %d", i)
	}
}

func TestSeenPruning(t *testing.T) {
	s := openTestStore(t)
	now := time.Now()
	s.now = func() time.Time { return now }
	s.maxSeen = 5
	us := addressing.TargetAddr(s.Identity().Addr())

	// Seven peers each send one request; the set keeps at most 5 entries.
	var msgs []*Message
	for i := range 7 {
		m := peerMsg(t, newTestIdentity(t), KindRequest, us, [NonceSize]byte{}, "", now.Add(time.Duration(i)*time.Second-time.Hour))
		_, err := s.HandleMessage(m, "")
		require.NoError(t, err)
		msgs = append(msgs, m)
	}
	require.Equal(t, 5, countBucket(t, s, bucketSeen))
	require.Equal(t, 5, countBucket(t, s, bucketSeenTime))
	// An evicted entry's replay is still refused by the record's PeerTime.
	_, err := s.HandleMessage(msgs[0], "")
	require.ErrorIs(t, err, ErrReplay)

	// A month later every entry has expired and is pruned.
	now = now.Add(MaxMessageAge + time.Hour)
	m := peerMsg(t, newTestIdentity(t), KindRequest, us, [NonceSize]byte{}, "", now)
	_, err = s.HandleMessage(m, "")
	require.NoError(t, err)
	require.Equal(t, 1, countBucket(t, s, bucketSeen))
	require.Equal(t, 1, countBucket(t, s, bucketSeenTime))
	s.mu.Lock()
	require.Equal(t, 1, s.seenLen)
	s.mu.Unlock()
}

// TestSeenCatchesWhatPeerTimeMisses: the seen set refuses an identical
// message even when the record's PeerTime would not (here because the record
// was rolled back to an older PeerTime).
func TestSeenCatchesWhatPeerTimeMisses(t *testing.T) {
	s := openTestStore(t)
	peer := newTestIdentity(t)
	m := peerMsg(t, peer, KindRequest, addressing.TargetAddr(s.Identity().Addr()), [NonceSize]byte{}, "", time.Now())
	r, err := s.HandleMessage(m, "")
	require.NoError(t, err)
	r.PeerTime = r.PeerTime.Add(-time.Hour)
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error { return putRecord(tx, r) }))
	_, err = s.HandleMessage(m, "")
	require.ErrorIs(t, err, ErrReplay)
	require.ErrorContains(t, err, "nonce seen before")
}

func countBucket(tb testing.TB, s *Store, name []byte) int {
	tb.Helper()
	n := 0
	require.NoError(tb, s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(name).ForEach(func(k, v []byte) error { n++; return nil })
	}))
	return n
}

func TestListSorted(t *testing.T) {
	s := openTestStore(t)
	us := addressing.TargetAddr(s.Identity().Addr())
	for i := range 5 {
		_, err := s.HandleMessage(peerMsg(t, newTestIdentity(t), KindRequest, us, [NonceSize]byte{}, "", time.Now()), "")
		require.NoError(t, err)
		_, err = s.Request(mustTarget(t, fmt.Sprintf("x%d", i)), "", "")
		require.NoError(t, err)
	}
	list := s.List()
	require.Len(t, list, 10)
	require.True(t, slices.IsSortedFunc(list, func(a, b Record) int {
		if c := slices.Compare(a.Key[:], b.Key[:]); c != 0 {
			return c
		}
		return slices.Compare(a.Nonce[:], b.Nonce[:])
	}))
	for _, r := range list[:5] {
		require.True(t, r.Key.IsZero())
		require.Equal(t, StatePendingOut, r.State)
		require.Contains(t, r.Target, "x")
	}
}

func TestRecordAddr(t *testing.T) {
	id := newTestIdentity(t)
	require.Equal(t, id.Addr(), Record{Key: id.PublicKey()}.Addr())
	a := id.Addr().WithNetwork(4)
	require.Equal(t, a, Record{Target: a.String()}.Addr())
	require.False(t, Record{Target: "bob"}.Addr().IsValid())
}

func TestConcurrentUse(t *testing.T) {
	s := openTestStore(t)
	us := addressing.TargetAddr(s.Identity().Addr())
	var mu sync.Mutex
	seen := map[addressing.PublicKey]State{}
	s.Subscribe(func(ev Event) {
		mu.Lock()
		seen[ev.Key] = ev.Record.State
		mu.Unlock()
	})
	var wg sync.WaitGroup
	peers := make([]*Identity, 8)
	for i := range peers {
		peers[i] = newTestIdentity(t)
	}
	for _, p := range peers {
		wg.Go(func() {
			_, err := s.HandleMessage(peerMsg(t, p, KindRequest, us, [NonceSize]byte{}, "", time.Now()), "")
			require.NoError(t, err)
			_, err = s.Approve(p.PublicKey(), "")
			require.NoError(t, err)
			for range 100 {
				require.True(t, s.IsTrusted(p.PublicKey()))
				s.List()
			}
		})
	}
	wg.Wait()
	require.NoError(t, s.Close())
	for _, p := range peers {
		require.Equal(t, StateTrusted, seen[p.PublicKey()])
	}
}

func BenchmarkIsTrusted(b *testing.B) {
	s := openTestStore(b)
	us := addressing.TargetAddr(s.Identity().Addr())
	var keys []addressing.PublicKey
	for range 100 {
		p := newTestIdentity(b)
		_, err := s.HandleMessage(peerMsg(b, p, KindRequest, us, [NonceSize]byte{}, "", time.Now()), "")
		require.NoError(b, err)
		_, err = s.Approve(p.PublicKey(), "")
		require.NoError(b, err)
		keys = append(keys, p.PublicKey())
	}
	stranger := newTestIdentity(b).PublicKey()
	b.Run("trusted", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if !s.IsTrusted(keys[i%len(keys)]) {
				b.Fatal("not trusted")
			}
			i++
		}
	})
	b.Run("stranger", func(b *testing.B) {
		for b.Loop() {
			if s.IsTrusted(stranger) {
				b.Fatal("trusted")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				s.IsTrusted(keys[i%len(keys)])
				i++
			}
		})
	})
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 3 {
		s, err := Open(t.TempDir())
		require.NoError(t, err)
		s.Subscribe(func(Event) {})
		_, err = s.Request(mustTarget(t, "x"), "", "")
		require.NoError(t, err)
		require.NoError(t, s.Close())
	}
	// Close waits for the delivery goroutine, so nothing is left at all.
	require.LessOrEqual(t, runtime.NumGoroutine(), before)
}
