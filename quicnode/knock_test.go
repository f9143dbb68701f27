package quicnode

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/stretchr/testify/require"
)

func newTestKnocker(t testing.TB) (*knocker, addressing.PublicKey) {
	t.Helper()
	p, s, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	k, ok := addressing.PublicKeyFrom(p)
	require.True(t, ok)
	kn, err := newKnocker(k, s)
	require.NoError(t, err)
	return kn, k
}

func TestKnockPairSecretAgrees(t *testing.T) {
	for range 20 {
		a, ka := newTestKnocker(t)
		b, kb := newTestKnocker(t)
		na, err := a.name(kb)
		require.NoError(t, err)
		b.rebuild([]addressing.PublicKey{ka})
		got, ok := b.accept(na)
		require.True(t, ok, "b accepts a's knock")
		require.Equal(t, ka, got)

		// Not the other way round: a knock is for one direction, so it
		// cannot be reflected at its dialer.
		a.rebuild([]addressing.PublicKey{kb})
		na2, err := a.name(kb)
		require.NoError(t, err)
		_, ok = a.accept(na2)
		require.False(t, ok, "a knock reflected at its dialer")

		// A third key cannot produce the pair's knock.
		c, _ := newTestKnocker(t)
		nc, err := c.name(kb)
		require.NoError(t, err)
		_, ok = b.accept(nc)
		require.False(t, ok)

		b.rebuild(nil)
		_, ok = b.accept(na2)
		require.False(t, ok, "revoked peers drop out of the table")
	}
}

// TestKnockFreshAndUnlinkable: every connection's knock is new (two knocks
// of one pair share nothing but the epoch byte), each is accepted once, and
// a replay is refused.
func TestKnockFreshAndUnlinkable(t *testing.T) {
	a, ka := newTestKnocker(t)
	b, kb := newTestKnocker(t)
	b.rebuild([]addressing.PublicKey{ka})
	seen := map[string]bool{}
	var first knock
	for i := range 200 {
		name, err := a.name(kb)
		require.NoError(t, err)
		require.False(t, seen[name], "knock %d repeats an earlier one", i)
		seen[name] = true
		k, ok := parseKnockName(name)
		require.True(t, ok)
		if i == 0 {
			first = k
		} else {
			require.Equal(t, first.v, k.v, "same epoch")
			require.NotEqual(t, first.nonce, k.nonce)
			require.NotEqual(t, first.hint, k.hint)
			require.NotEqual(t, first.tag, k.tag)
		}
		got, ok := b.accept(name)
		require.True(t, ok, "knock %d refused", i)
		require.Equal(t, ka, got)
		_, ok = b.accept(name)
		require.False(t, ok, "knock %d replayed", i)
	}
	require.EqualValues(t, 200, b.replays.Load())
}

// TestKnockEpochs: a knock is accepted in its epoch and the two neighbours
// (clock skew), not further away; its replay-cache entry lives as long as
// it would be accepted.
func TestKnockEpochs(t *testing.T) {
	a, ka := newTestKnocker(t)
	b, kb := newTestKnocker(t)
	now := time.Unix(1_800_000_000, 0)
	b.now = func() time.Time { return now }
	b.rebuild([]addressing.PublicKey{ka})
	for _, tc := range []struct {
		skew time.Duration
		ok   bool
	}{
		{-knockEpoch, true}, {0, true}, {knockEpoch, true},
		{-2 * knockEpoch, false}, {2 * knockEpoch, false}, {256 * knockEpoch, false},
	} {
		t.Run(fmt.Sprint(tc.skew), func(t *testing.T) {
			a.now = func() time.Time { return now.Add(tc.skew) }
			name, err := a.name(kb)
			require.NoError(t, err)
			_, ok := b.accept(name)
			require.Equal(t, tc.ok, ok)
		})
	}

	// A knock accepted in epoch e is still refused as a replay in e+1
	// (where it is valid), and its entry goes once e is no longer accepted.
	a.now = func() time.Time { return now }
	name, err := a.name(kb)
	require.NoError(t, err)
	_, ok := b.accept(name)
	require.True(t, ok)
	now = now.Add(knockEpoch)
	b.refresh()
	_, ok = b.accept(name)
	require.False(t, ok, "replayed in the next epoch")
	now = now.Add(knockEpoch)
	b.refresh()
	_, ok = b.accept(name)
	require.False(t, ok, "too old")
	b.mu.Lock()
	for sl := range b.seen {
		require.GreaterOrEqual(t, sl.epoch, b.epoch-1, "replay entries of epochs no longer accepted are dropped")
	}
	b.mu.Unlock()
}

// TestKnockQuotaIsPerPeer: a peer that knocks more than maxKnocksPerEpoch
// times in an epoch is refused until the epoch ends; another peer's knocks
// are accepted all the same (only a key's own knocks fill its quota).
func TestKnockQuotaIsPerPeer(t *testing.T) {
	a, ka := newTestKnocker(t)
	c, kc := newTestKnocker(t)
	b, kb := newTestKnocker(t)
	now := time.Unix(1_800_000_000, 0)
	for _, kn := range []*knocker{a, b, c} {
		kn.now = func() time.Time { return now }
	}
	b.rebuild([]addressing.PublicKey{ka, kc})
	for i := range maxKnocksPerEpoch {
		name, err := a.name(kb)
		require.NoError(t, err)
		_, ok := b.accept(name)
		require.True(t, ok, "knock %d", i)
	}
	name, err := a.name(kb)
	require.NoError(t, err)
	_, ok := b.accept(name)
	require.False(t, ok, "over the quota")
	for i := range 10 {
		name, err := c.name(kb)
		require.NoError(t, err)
		got, ok := b.accept(name)
		require.True(t, ok, "another peer's knock %d", i)
		require.Equal(t, kc, got)
	}
	now = now.Add(knockEpoch)
	b.refresh()
	name, err = a.name(kb)
	require.NoError(t, err)
	_, ok = b.accept(name)
	require.True(t, ok, "a new epoch, a new quota")
}

func TestParseKnockName(t *testing.T) {
	a, _ := newTestKnocker(t)
	_, kb := newTestKnocker(t)
	good, err := a.name(kb)
	require.NoError(t, err)
	_, ok := parseKnockName(good)
	require.True(t, ok)
	for name, bad := range map[string]string{
		"empty":      "",
		"v1 knock":   "k" + strings.Repeat("ab", 12) + knockSuffix,
		"upper case": strings.ToUpper(good[:len(good)-len(knockSuffix)]) + knockSuffix,
		"no prefix":  "x" + good[1:],
		"suffix":     good[:len(good)-len(knockSuffix)] + ".agentnef",
		"non-hex":    "k" + strings.Repeat("g", 2*knockHeadLen) + "." + strings.Repeat("0", 2*knockTagLen) + knockSuffix,
		"no dot":     "k" + strings.Repeat("0", 2*knockHeadLen) + "0" + strings.Repeat("0", 2*knockTagLen) + knockSuffix,
		"long":       good + "0",
		"short":      good[1:],
	} {
		_, ok := parseKnockName(bad)
		require.False(t, ok, name)
	}
}

func FuzzParseKnockName(f *testing.F) {
	a, _ := newTestKnocker(f)
	_, kb := newTestKnocker(f)
	for range 3 {
		name, err := a.name(kb)
		require.NoError(f, err)
		f.Add(name)
	}
	f.Add("agentnet")
	f.Add("k" + strings.Repeat("0", 2*knockHeadLen) + "." + strings.Repeat("0", 2*knockTagLen) + knockSuffix)
	f.Fuzz(func(t *testing.T, name string) {
		k, ok := parseKnockName(name)
		if !ok {
			return
		}
		// Round trip: a name that parses is the canonical encoding of what
		// it parsed to.
		require.Equal(t, name, string(appendKnockName(nil, k)))
		k2, ok := parseKnockName(string(appendKnockName(nil, k)))
		require.True(t, ok)
		require.Equal(t, k, k2)
	})
}

// TestKnockReplayRefusedBeforeCertificate: an observer who saw a's knock
// to b and replays it (with its own certificate) is refused before key
// exchange and never sees b's certificate; a replaying its own knock is
// refused too, and a fresh knock works. Before knock v2, the replayed name
// was accepted and the observer received b's certificate.
func TestKnockReplayRefusedBeforeCertificate(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	a := startNode(t, srv, "")
	b := startNode(t, srv, "")
	c := startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ctx := ctxT(t, 10*time.Second)

	observed, err := a.knock.name(b.PublicKey())
	require.NoError(t, err)
	dialWith := func(from *testNode, name string, sawCert *bool) error {
		tlsConf := certs.ClientConfig(from.cert, alpn, addressing.PublicKey{}, func(addressing.PublicKey) error {
			*sawCert = true
			return nil
		})
		tlsConf.ServerName = name
		conn, err := from.paths.Transport().Dial(ctx, b.LocalAddr(), tlsConf, from.qconf)
		if err == nil {
			err = paths.AwaitWelcome(ctx, conn)
			conn.CloseWithError(0, "")
		}
		return classify(err)
	}
	// a's own connection, with the knock the observer saw.
	var sawCert bool
	require.NoError(t, dialWith(a, observed, &sawCert))
	require.True(t, sawCert)

	for _, from := range []*testNode{c, a} {
		before := b.Stats().KnocksRefused
		sawCert = false
		require.ErrorIs(t, dialWith(from, observed, &sawCert), ErrNotTrusted)
		require.False(t, sawCert, "a replayed knock showed b's certificate")
		require.Greater(t, b.Stats().KnocksRefused, before, "refused at the knock")
	}
	require.EqualValues(t, 2, b.Stats().KnocksReplayed)
	fresh, err := a.knock.name(b.PublicKey())
	require.NoError(t, err)
	require.NoError(t, dialWith(a, fresh, &sawCert))

	// Real dials, many connections: each knocks afresh.
	for range 5 {
		require.NoError(t, a.Disconnect(b.Addr().String()))
		require.NoError(t, echoOnce(ctx, a.Node, b.Addr().String()))
	}
}

// BenchmarkKnockRefuse is the knock's own work for a stranger's well-formed
// name, with 0, 100 and 1000 admissible peers: it does not grow with them.
func BenchmarkKnockRefuse(b *testing.B) {
	for _, peers := range []int{0, 100, 1000} {
		b.Run(fmt.Sprint(peers), func(b *testing.B) {
			kn, _ := newTestKnocker(b)
			keys := make([]addressing.PublicKey, peers)
			for i := range keys {
				_, keys[i] = newTestKnocker(b)
			}
			kn.rebuild(keys)
			stranger, _ := newTestKnocker(b)
			name, err := stranger.name(kn.self)
			require.NoError(b, err)
			for b.Loop() {
				if _, ok := kn.accept(name); ok {
					b.Fatal("accepted")
				}
			}
		})
	}
}
