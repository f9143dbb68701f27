package network

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
)

// testSigner is an identity for tests.
type testSigner struct {
	priv ed25519.PrivateKey
	pub  addressing.PublicKey
}

func newSigner(tb testing.TB) *testSigner {
	tb.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(tb, err)
	k, _ := addressing.PublicKeyFrom(pub)
	return &testSigner{priv: priv, pub: k}
}

// seededSigner is deterministic, for seed corpora.
func seededSigner(b byte) *testSigner {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, 32))
	k, _ := addressing.PublicKeyFrom(priv.Public().(ed25519.PublicKey))
	return &testSigner{priv: priv, pub: k}
}

func (s *testSigner) PublicKey() addressing.PublicKey { return s.pub }
func (s *testSigner) Sign(m []byte) []byte            { return ed25519.Sign(s.priv, m) }

var t0 = time.Unix(1_800_000_000, 123)

func infoFor(owner *testSigner) Info { return Info{ID: 7, Name: "builders", Owner: owner.pub} }

func encode(tb testing.TB, d Doc) []byte {
	tb.Helper()
	b, err := d.AppendBinary(nil)
	require.NoError(tb, err)
	return b
}

func TestRoundTrip(t *testing.T) {
	owner, alice := newSigner(t), newSigner(t)
	info := infoFor(owner)
	targeted, err := NewInvite(owner, info, alice.pub, t0, time.Hour)
	require.NoError(t, err)
	bearer, err := NewInvite(owner, info, addressing.PublicKey{}, t0, time.Hour)
	require.NoError(t, err)
	jt, err := NewJoin(alice, targeted, t0.Add(time.Minute))
	require.NoError(t, err)
	jb, err := NewJoin(alice, bearer, t0.Add(time.Minute))
	require.NoError(t, err)
	leave, err := NewLeave(alice, info, t0.Add(2*time.Minute))
	require.NoError(t, err)
	remove, err := NewRemove(owner, info, alice.pub, t0.Add(2*time.Minute))
	require.NoError(t, err)

	for name, d := range map[string]Doc{
		"invite": targeted.Invite, "bearer invite": bearer.Invite,
		"join": jt, "bearer join": jb, "leave": leave, "remove": remove,
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, d.Verify())
			b := encode(t, d)
			require.LessOrEqual(t, len(b), MaxDocSize)
			got, err := Parse(b)
			require.NoError(t, err)
			require.Equal(t, d, got)
			require.NoError(t, got.Verify())
			require.Equal(t, b, encode(t, got))
			// Every prefix and any trailing byte is refused.
			for i := range b {
				_, err := Parse(b[:i])
				require.ErrorIs(t, err, ErrMalformed, "prefix %d", i)
			}
			_, err = Parse(append(bytes.Clone(b), 0))
			require.ErrorIs(t, err, ErrMalformed)
			// Every flipped bit is refused by Parse or Verify.
			for i := range b {
				c := bytes.Clone(b)
				c[i] ^= 0x10
				if d2, err := Parse(c); err == nil {
					require.Error(t, d2.Verify(), "bit flip at %d verifies", i)
				}
			}
		})
	}
}

func TestToken(t *testing.T) {
	owner, alice, bob := newSigner(t), newSigner(t), newSigner(t)
	info := infoFor(owner)
	for _, tc := range []struct {
		name    string
		invitee addressing.PublicKey
	}{{"targeted", alice.pub}, {"bearer", addressing.PublicKey{}}} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := NewInvite(owner, info, tc.invitee, t0, time.Hour)
			require.NoError(t, err)
			s := tok.String()
			require.True(t, strings.HasPrefix(s, TokenPrefix))
			got, err := ParseToken(" " + s + "\n")
			require.NoError(t, err)
			require.Equal(t, tok.Invite, got.Invite)
			require.Equal(t, tok.Key, got.Key)
			require.Equal(t, tc.invitee.IsZero(), got.Invite.Bearer)

			_, err = NewJoin(alice, got, t0)
			require.NoError(t, err)
			_, err = NewJoin(bob, got, t0)
			if tc.invitee.IsZero() {
				require.NoError(t, err, "anyone holding a bearer token joins")
			} else {
				require.ErrorIs(t, err, ErrWrongInvitee)
			}
		})
	}
	t.Run("malformed", func(t *testing.T) {
		tok, err := NewInvite(owner, info, addressing.PublicKey{}, t0, time.Hour)
		require.NoError(t, err)
		s := tok.String()
		for _, bad := range []string{"", "anet-invite:", s[:len(s)-3], "x" + s, s + "AA", TokenPrefix + "!!"} {
			_, err := ParseToken(bad)
			require.ErrorIs(t, err, ErrMalformed, "%q", bad)
		}
		// Another capability key: the claim would not verify.
		other, err := NewInvite(owner, info, addressing.PublicKey{}, t0, time.Hour)
		require.NoError(t, err)
		forged := Token{Invite: tok.Invite, Key: other.Key}.String()
		_, err = ParseToken(forged)
		require.ErrorIs(t, err, ErrBadSignature)
		// Not signed by its owner.
		inv := *tok.Invite
		inv.Name = "other"
		_, err = ParseToken(Token{Invite: &inv, Key: tok.Key}.String())
		require.ErrorIs(t, err, ErrBadSignature)
	})
}

func TestNewInviteRefuses(t *testing.T) {
	owner, alice := newSigner(t), newSigner(t)
	info := infoFor(owner)
	_, err := NewInvite(alice, info, addressing.PublicKey{}, t0, time.Hour)
	require.ErrorIs(t, err, ErrBadSignature, "only the owner invites")
	_, err = NewInvite(owner, info, owner.pub, t0, time.Hour)
	require.ErrorIs(t, err, ErrOwner)
	_, err = NewInvite(owner, info, alice.pub, t0, 0)
	require.ErrorIs(t, err, ErrMalformed)
	_, err = NewInvite(owner, Info{ID: 0, Name: "x", Owner: owner.pub}, alice.pub, t0, time.Hour)
	require.ErrorIs(t, err, ErrMalformed)
	_, err = NewInvite(owner, Info{ID: 1, Name: "Bad Name", Owner: owner.pub}, alice.pub, t0, time.Hour)
	require.ErrorIs(t, err, ErrMalformed)
	_, err = NewRemove(alice, info, owner.pub, t0)
	require.ErrorIs(t, err, ErrBadSignature)
	_, err = NewLeave(owner, info, t0)
	require.ErrorIs(t, err, ErrOwner, "the owner cannot leave")
}

func TestMembershipRules(t *testing.T) {
	owner, alice, mallory := newSigner(t), newSigner(t), newSigner(t)
	info := infoFor(owner)
	tok, err := NewInvite(owner, info, alice.pub, t0, time.Hour)
	require.NoError(t, err)
	join := func(at time.Time) *Join {
		j, err := NewJoin(alice, tok, at)
		require.NoError(t, err)
		return j
	}
	j1 := join(t0.Add(time.Minute))
	j2 := join(t0.Add(3 * time.Minute))
	leave, err := NewLeave(alice, info, t0.Add(2*time.Minute))
	require.NoError(t, err)
	remove, err := NewRemove(owner, info, alice.pub, t0.Add(2*time.Minute))
	require.NoError(t, err)

	// A Join forged with another "owner" key: valid on its own, but not
	// under this network's owner (what a compromised rendezvous could make).
	fakeOwner := newSigner(t)
	fakeTok, err := NewInvite(fakeOwner, Info{ID: info.ID, Name: info.Name, Owner: fakeOwner.pub}, mallory.pub, t0, time.Hour)
	require.NoError(t, err)
	forged, err := NewJoin(mallory, fakeTok, t0.Add(time.Minute))
	require.NoError(t, err)
	// A Join whose signature is broken.
	tampered := *j1
	tampered.Time = tampered.Time.Add(time.Second)
	// A Join after the invite expired (signed anyway, by hand).
	late := *join(t0.Add(time.Minute))
	late.Time = t0.Add(2 * time.Hour)
	copy(late.Sig[:], alice.Sign(signed(late.appendBody)))
	// A later invite, issued after the Remove.
	tok2, err := NewInvite(owner, info, alice.pub, t0.Add(150*time.Second), time.Hour)
	require.NoError(t, err)
	rejoin, err := NewJoin(alice, tok2, t0.Add(4*time.Minute))
	require.NoError(t, err)
	// Another network's Leave.
	otherLeave, err := NewLeave(alice, Info{ID: 8, Name: info.Name, Owner: owner.pub}, t0.Add(2*time.Minute))
	require.NoError(t, err)
	// A Remove forged by a non-owner.
	fakeRemove, err := NewRemove(fakeOwner, Info{ID: info.ID, Name: info.Name, Owner: fakeOwner.pub}, alice.pub, t0.Add(2*time.Minute))
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		err  error // nil: accepted
		run  func() error
	}{
		{"first join", nil, func() error { return info.CheckJoin(j1, nil, nil) }},
		{"newer join refreshes", nil, func() error { return info.CheckJoin(j2, j1, nil) }},
		{"replayed join", ErrStale, func() error { return info.CheckJoin(j1, j1, nil) }},
		{"older join", ErrStale, func() error { return info.CheckJoin(j1, j2, nil) }},
		{"forged owner", ErrWrongNetwork, func() error { return info.CheckJoin(forged, nil, nil) }},
		{"bad signature", ErrBadSignature, func() error { return info.CheckJoin(&tampered, nil, nil) }},
		{"expired invite", ErrExpired, func() error { return info.CheckJoin(&late, nil, nil) }},
		{"leave", nil, func() error { return info.CheckExit(leave, j1, nil) }},
		{"remove", nil, func() error { return info.CheckExit(remove, j1, nil) }},
		{"leave of a non-member", ErrNotMember, func() error { return info.CheckExit(leave, nil, nil) }},
		{"leave before the join", ErrStale, func() error { return info.CheckExit(leave, j2, nil) }},
		{"replayed leave", ErrStale, func() error { return info.CheckExit(leave, j1, leave) }},
		{"leave of another network", ErrWrongNetwork, func() error { return info.CheckExit(otherLeave, j1, nil) }},
		{"remove by a non-owner", ErrWrongNetwork, func() error { return info.CheckExit(fakeRemove, j1, nil) }},
		{"old join replayed after leave", ErrStale, func() error { return info.CheckJoin(j1, nil, leave) }},
		{"rejoin after leave", nil, func() error { return info.CheckJoin(j2, nil, leave) }},
		{"rejoin on the old invite after remove", ErrRemoved, func() error { return info.CheckJoin(j2, nil, remove) }},
		{"rejoin on a newer invite after remove", nil, func() error { return info.CheckJoin(rejoin, nil, remove) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if tc.err == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.err)
			}
		})
	}
}

func TestCheckTime(t *testing.T) {
	require.NoError(t, CheckTime(t0, t0.Add(MaxClockSkew)))
	require.ErrorIs(t, CheckTime(t0, t0.Add(MaxClockSkew+time.Second)), ErrExpired)
	require.ErrorIs(t, CheckTime(t0.Add(MaxClockSkew+time.Second), t0), ErrExpired)
}
