package trustdb

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
)

func countState(s *Store, st State) (n int) {
	for _, r := range s.List() {
		if r.State == st {
			n++
		}
	}
	return n
}

// TestUntrustedRecordsBounded replays issue 9's attack: 300 fresh keys each
// send a request and then revoke it. Before the fix that left 300
// permanent revoked records (and trust.db grew 32 KiB → 512 KiB); now at
// most MaxUntrusted stay, they expire after UntrustedClosedTTL, and the
// record of a peer we once trusted is kept.
func TestUntrustedRecordsBounded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(t, err)
	now := time.Now()
	var clockMu sync.Mutex
	s.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	us := addressing.TargetAddr(s.Identity().Addr())

	// A friend we trusted and later revoked: never expires.
	friend := newTestIdentity(t)
	fe := &testEnv{s: s, peer: friend, clock: now.Add(-time.Hour)}
	require.NoError(t, peerRequests(t, fe))
	require.NoError(t, weApprove(t, fe))
	require.NoError(t, weRevoke(t, fe))

	const strangers = 300
	for i := range strangers {
		p := newTestIdentity(t)
		at := now.Add(time.Duration(i) * time.Millisecond)
		_, err := s.HandleMessage(peerMsg(t, p, KindRequest, us, [NonceSize]byte{}, "", at), "")
		require.NoError(t, err)
		_, err = s.HandleMessage(peerMsg(t, p, KindRevoke, us, [NonceSize]byte{}, "", at.Add(time.Microsecond)), "")
		require.NoError(t, err)
		advance(time.Millisecond)
	}
	require.Equal(t, MaxUntrusted+1, len(s.List()), "bounded: the strangers' records plus the friend's")
	rec, ok := s.Get(friend.PublicKey())
	require.True(t, ok)
	require.Equal(t, StateRevoked, rec.State)
	require.True(t, rec.EverTrusted)

	// A day later they are gone (Prune, as the daemon runs it), the
	// friend's record stays, and the count survives a restart.
	advance(UntrustedClosedTTL + time.Minute)
	require.NoError(t, s.Prune())
	require.Len(t, s.List(), 1)
	_, ok = s.Get(friend.PublicKey())
	require.True(t, ok)
	require.NoError(t, s.Close())
	fi, err := os.Stat(filepath.Join(dir, DatabaseFile))
	require.NoError(t, err)
	t.Logf("trust.db after %d strangers: %d bytes", strangers, fi.Size())

	s, err = Open(dir)
	require.NoError(t, err)
	defer s.Close()
	s.mu.Lock()
	require.Zero(t, s.untrusted)
	s.mu.Unlock()
}

// TestUntrustedEvictionOrder: beyond MaxUntrusted the oldest closed records
// go before any request still waiting for a decision, then the oldest
// requests; requests expire after UntrustedPendingTTL.
func TestUntrustedEvictionOrder(t *testing.T) {
	s := openTestStore(t)
	now := time.Now()
	s.now = func() time.Time { return now }
	us := addressing.TargetAddr(s.Identity().Addr())
	request := func() *Identity {
		p := newTestIdentity(t)
		_, err := s.HandleMessage(peerMsg(t, p, KindRequest, us, [NonceSize]byte{}, "", now), "")
		require.NoError(t, err)
		now = now.Add(time.Millisecond)
		return p
	}
	// Ten requests we reject, then requests up to the bound.
	for range 10 {
		p := request()
		_, err := s.Reject(p.PublicKey(), "")
		require.NoError(t, err)
	}
	var waiting []*Identity
	for range MaxUntrusted - 10 {
		waiting = append(waiting, request())
	}
	require.Equal(t, 10, countState(s, StateRejected))
	// Ten more requests push the rejected records out, not a request.
	for range 10 {
		waiting = append(waiting, request())
	}
	require.Zero(t, countState(s, StateRejected))
	require.Equal(t, MaxUntrusted, countState(s, StatePendingIn))
	// One more: the oldest request goes.
	waiting = append(waiting, request())
	require.Equal(t, MaxUntrusted, countState(s, StatePendingIn))
	_, ok := s.Get(waiting[0].PublicKey())
	require.False(t, ok, "the oldest request was evicted")
	_, ok = s.Get(waiting[len(waiting)-1].PublicKey())
	require.True(t, ok)
	// Approving one makes it permanent; the rest expire.
	_, err := s.Approve(waiting[1].PublicKey(), "")
	require.NoError(t, err)
	now = now.Add(UntrustedPendingTTL + time.Hour)
	require.NoError(t, s.Prune())
	require.Len(t, s.List(), 1)
	require.True(t, s.IsTrusted(waiting[1].PublicKey()))
}

// TestForget: a user deletes the records of peers (Forget) and our own
// unanswered requests (ForgetRequests); a trusted peer must be revoked
// first.
func TestForget(t *testing.T) {
	s := openTestStore(t)
	var mu sync.Mutex
	var evs []Event
	cancel := s.Subscribe(func(ev Event) { mu.Lock(); evs = append(evs, ev); mu.Unlock() })
	defer cancel()
	peer := newTestIdentity(t)
	e := &testEnv{s: s, peer: peer, clock: time.Now().Add(-time.Hour)}
	require.NoError(t, peerRequests(t, e))
	require.NoError(t, weApprove(t, e))
	_, err := s.Forget(peer.PublicKey())
	require.ErrorIs(t, err, ErrUnexpected, "trusted: revoke first")
	require.NoError(t, weRevoke(t, e))
	r, err := s.Forget(peer.PublicKey())
	require.NoError(t, err)
	require.Equal(t, StateRevoked, r.State)
	_, ok := s.Get(peer.PublicKey())
	require.False(t, ok)
	_, err = s.Forget(peer.PublicKey())
	require.ErrorIs(t, err, ErrUnexpected, "no record")
	// The peer may ask afresh.
	require.NoError(t, peerRequests(t, e))
	rec, _ := s.Get(peer.PublicKey())
	require.Equal(t, StatePendingIn, rec.State)

	// Our unanswered request, and its undelivered message, go.
	_, err = s.Request(mustTarget(t, "carol"), "", "hi")
	require.NoError(t, err)
	n := len(s.Outbox())
	rs, err := s.ForgetRequests(mustTarget(t, "carol"))
	require.NoError(t, err)
	require.Len(t, rs, 1)
	require.Len(t, s.Outbox(), n-1, "the undelivered request is withdrawn")
	for _, r := range s.List() {
		require.NotEqual(t, "carol", r.Target)
	}
	rs, err = s.ForgetRequests(mustTarget(t, "carol"))
	require.NoError(t, err)
	require.Empty(t, rs)

	s.Flush()
	mu.Lock()
	defer mu.Unlock()
	var deleted int
	for _, ev := range evs {
		if ev.Record.State == 0 {
			deleted++
		}
	}
	require.Equal(t, 2, deleted, "each deletion is an event with State 0")
}

// TestRepeatedRequestOneRecord: asking the same peer again replaces the
// earlier request (and its message, if undelivered) instead of piling up
// pending-out records (issue 9, item 2). Before the fix three requests left
// three records and three queued messages.
func TestRepeatedRequestOneRecord(t *testing.T) {
	s := openTestStore(t)
	peer := newTestIdentity(t)
	to := addressing.TargetAddr(peer.Addr())
	var first, last *Message
	for i := range 3 {
		m, err := s.Request(to, "me", "hello")
		require.NoError(t, err)
		if i == 0 {
			first = m
		}
		last = m
	}
	list := s.List()
	require.Len(t, list, 1)
	require.Equal(t, StatePendingOut, list[0].State)
	require.Equal(t, last.Nonce, list[0].Nonce)
	out := s.Outbox()
	require.Len(t, out, 1, "only the latest request waits in the outbox")
	m, err := ParseMessage(out[0].Msg)
	require.NoError(t, err)
	require.Equal(t, last.Nonce, m.Nonce)
	// Another target is another record.
	_, err = s.Request(mustTarget(t, "bob"), "me", "")
	require.NoError(t, err)
	require.Len(t, s.List(), 2)

	// An answer to the superseded request is refused; the latest works.
	us := addressing.TargetAddr(s.Identity().Addr())
	_, err = s.HandleMessage(peerMsg(t, peer, KindApprove, us, first.Nonce, "", time.Now()), "")
	require.ErrorIs(t, err, ErrUnexpected)
	_, err = s.HandleMessage(peerMsg(t, peer, KindApprove, us, last.Nonce, "", time.Now().Add(time.Second)), "")
	require.NoError(t, err)
	require.True(t, s.IsTrusted(peer.PublicKey()))
}

// TestStoreSizeBoundedUnderStrangerFlood: wave after wave of strangers
// (request, then withdraw, each from a fresh key) does not grow trust.db
// without bound: the records are bounded (MaxUntrusted) and so is the
// replay guard (maxSeen, lowered here so the bound is reached quickly), so
// once both are full the file stops growing (bbolt reuses its free pages).
func TestStoreSizeBoundedUnderStrangerFlood(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(t, err)
	defer s.Close()
	now := time.Now()
	s.now = func() time.Time { return now }
	s.maxSeen = 2000
	us := addressing.TargetAddr(s.Identity().Addr())
	size := func() int64 {
		fi, err := os.Stat(filepath.Join(dir, DatabaseFile))
		require.NoError(t, err)
		return fi.Size()
	}
	var sizes []int64
	for range 10 {
		for i := range 300 {
			p := newTestIdentity(t)
			at := now.Add(time.Duration(i) * time.Millisecond)
			_, err := s.HandleMessage(peerMsg(t, p, KindRequest, us, [NonceSize]byte{}, "", at), "")
			require.NoError(t, err)
			_, err = s.HandleMessage(peerMsg(t, p, KindRevoke, us, [NonceSize]byte{}, "", at.Add(time.Microsecond)), "")
			require.NoError(t, err)
		}
		now = now.Add(time.Second)
		require.Equal(t, MaxUntrusted, len(s.List()))
		s.mu.Lock()
		require.LessOrEqual(t, s.seenLen, s.maxSeen)
		s.mu.Unlock()
		sizes = append(sizes, size())
	}
	t.Logf("trust.db after each wave of 300 strangers: %v bytes", sizes)
	// The guard is full after 1000 strangers (wave 4); from then on the
	// file keeps its size.
	for i := 5; i < len(sizes); i++ {
		require.LessOrEqual(t, sizes[i], sizes[4], "trust.db grew after its bounds were full: %v", sizes)
	}
}
