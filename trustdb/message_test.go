package trustdb

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
)

func newTestIdentity(tb testing.TB) *Identity {
	tb.Helper()
	id, err := GenerateIdentity()
	require.NoError(tb, err)
	return id
}

func mustTarget(tb testing.TB, s string) addressing.Target {
	tb.Helper()
	t, err := addressing.ParseTarget(s)
	require.NoError(tb, err)
	return t
}

func nonce(b byte) (n [NonceSize]byte) {
	for i := range n {
		n[i] = b + byte(i)
	}
	return n
}

func TestMessageRoundTrip(t *testing.T) {
	a, b := newTestIdentity(t), newTestIdentity(t)
	tests := []struct {
		name     string
		kind     Kind
		to       addressing.Target
		replyTo  [NonceSize]byte
		hostname string
		note     string
	}{
		{"request by address", KindRequest, addressing.TargetAddr(b.Addr()), [NonceSize]byte{}, "alice", "hi, it's alice"},
		{"request by hostname", KindRequest, mustTarget(t, "bob"), [NonceSize]byte{}, "", ""},
		{"request other network", KindRequest, addressing.TargetAddr(b.Addr().WithNetwork(7)), [NonceSize]byte{}, "a-1", "ünïcödé"},
		{"approve", KindApprove, addressing.TargetAddr(b.Addr()), nonce(1), "alice", ""},
		{"reject", KindReject, addressing.TargetAddr(b.Addr()), nonce(2), "", "no thanks"},
		{"revoke", KindRevoke, addressing.TargetAddr(b.Addr()), [NonceSize]byte{}, "", strings.Repeat("x", MaxNoteLen)},
		{"max hostname", KindRequest, mustTarget(t, strings.Repeat("h", 63)), [NonceSize]byte{}, strings.Repeat("a", 63), strings.Repeat("é", MaxNoteLen/2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMessage(a, tt.kind, tt.to, tt.replyTo, tt.hostname, tt.note)
			require.NoError(t, err)
			require.NoError(t, m.Verify())
			require.NotZero(t, m.Nonce)
			require.WithinDuration(t, time.Now(), m.Time, time.Minute)

			enc, err := m.AppendBinary(nil)
			require.NoError(t, err)
			require.LessOrEqual(t, len(enc), MaxMessageSize)
			require.Equal(t, byte(1), enc[0], "version byte")

			got, err := ParseMessage(enc)
			require.NoError(t, err)
			require.NoError(t, got.Verify())
			require.Equal(t, tt.kind, got.Kind)
			require.Equal(t, a.PublicKey(), got.From)
			require.Equal(t, tt.to, got.To)
			require.Equal(t, m.Nonce, got.Nonce)
			require.Equal(t, tt.replyTo, got.ReplyTo)
			require.True(t, m.Time.Equal(got.Time))
			require.Equal(t, m.Time.UnixNano(), got.Time.UnixNano())
			require.Equal(t, tt.hostname, got.Hostname)
			require.Equal(t, tt.note, got.Note)
			require.Equal(t, m.Sig, got.Sig)

			again, err := got.AppendBinary([]byte("prefix"))
			require.NoError(t, err)
			require.Equal(t, append([]byte("prefix"), enc...), again)
		})
	}
}

func TestNewMessageInvalid(t *testing.T) {
	a, b := newTestIdentity(t), newTestIdentity(t)
	to := addressing.TargetAddr(b.Addr())
	tests := []struct {
		name     string
		kind     Kind
		to       addressing.Target
		replyTo  [NonceSize]byte
		hostname string
		note     string
	}{
		{"kind 0", 0, to, [NonceSize]byte{}, "", ""},
		{"kind 5", 5, to, [NonceSize]byte{}, "", ""},
		{"zero to", KindRequest, addressing.Target{}, [NonceSize]byte{}, "", ""},
		{"request with replyTo", KindRequest, to, nonce(1), "", ""},
		{"revoke with replyTo", KindRevoke, to, nonce(1), "", ""},
		{"approve without replyTo", KindApprove, to, [NonceSize]byte{}, "", ""},
		{"reject without replyTo", KindReject, to, [NonceSize]byte{}, "", ""},
		{"approve to hostname", KindApprove, mustTarget(t, "bob"), nonce(1), "", ""},
		{"revoke to hostname", KindRevoke, mustTarget(t, "bob"), [NonceSize]byte{}, "", ""},
		{"bad hostname", KindRequest, to, [NonceSize]byte{}, "Bob", ""},
		{"long note", KindRequest, to, [NonceSize]byte{}, "", strings.Repeat("x", MaxNoteLen+1)},
		{"invalid utf-8 note", KindRequest, to, [NonceSize]byte{}, "", "\xff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMessage(a, tt.kind, tt.to, tt.replyTo, tt.hostname, tt.note)
			require.Error(t, err)
		})
	}
	_, err := NewMessage(nil, KindRequest, to, [NonceSize]byte{}, "", "")
	require.Error(t, err)
}

func TestMessageTamper(t *testing.T) {
	a, b := newTestIdentity(t), newTestIdentity(t)
	for _, kind := range []Kind{KindRequest, KindApprove} {
		var reply [NonceSize]byte
		to := mustTarget(t, "bob")
		if kind == KindApprove {
			reply, to = nonce(9), addressing.TargetAddr(b.Addr())
		}
		m, err := NewMessage(a, kind, to, reply, "alice", "note")
		require.NoError(t, err)
		enc, err := m.AppendBinary(nil)
		require.NoError(t, err)
		for i := range enc {
			for _, flip := range []byte{0x01, 0x80, 0xff} {
				bad := bytes.Clone(enc)
				bad[i] ^= flip
				got, err := ParseMessage(bad)
				if err != nil {
					require.ErrorIs(t, err, ErrMalformed)
					continue
				}
				require.Error(t, got.Verify(), "byte %d ^ %#x", i, flip)
			}
		}
		// Truncation at every length, and any trailing byte, is refused.
		for n := range len(enc) {
			_, err := ParseMessage(enc[:n])
			require.ErrorIs(t, err, ErrMalformed, "length %d", n)
		}
		_, err = ParseMessage(append(bytes.Clone(enc), 0))
		require.ErrorIs(t, err, ErrMalformed)
	}
}

func TestMessageForgedSignature(t *testing.T) {
	a, mallory := newTestIdentity(t), newTestIdentity(t)
	m, err := NewMessage(mallory, KindRequest, mustTarget(t, "bob"), [NonceSize]byte{}, "", "")
	require.NoError(t, err)
	m.From = a.PublicKey() // claims to be a
	require.ErrorIs(t, m.Verify(), ErrBadSignature)

	m2, err := NewMessage(a, KindRequest, mustTarget(t, "bob"), [NonceSize]byte{}, "", "")
	require.NoError(t, err)
	m2.Note = "changed"
	require.ErrorIs(t, m2.Verify(), ErrBadSignature)

	m3 := *m2
	m3.From = addressing.PublicKey{}
	require.ErrorIs(t, m3.Verify(), ErrMalformed)
}

func TestParseMessageTooLarge(t *testing.T) {
	_, err := ParseMessage(make([]byte, MaxMessageSize+1))
	require.ErrorIs(t, err, ErrMalformed)
	require.True(t, errors.Is(err, ErrMalformed))
}

func TestMessageString(t *testing.T) {
	a := newTestIdentity(t)
	m, err := NewMessage(a, KindRequest, mustTarget(t, "bob"), [NonceSize]byte{}, "", "secret note")
	require.NoError(t, err)
	s := m.String()
	require.Contains(t, s, "request")
	require.Contains(t, s, a.NodeID().String())
	require.NotContains(t, s, "secret note")
}

// validMessageSeeds returns encodings of one message of each shape, for fuzz
// seeds.
func validMessageSeeds(tb testing.TB) [][]byte {
	a, b := newTestIdentity(tb), newTestIdentity(tb)
	var out [][]byte
	add := func(kind Kind, to addressing.Target, reply [NonceSize]byte, host, note string) {
		m, err := NewMessage(a, kind, to, reply, host, note)
		require.NoError(tb, err)
		enc, err := m.AppendBinary(nil)
		require.NoError(tb, err)
		out = append(out, enc)
	}
	add(KindRequest, addressing.TargetAddr(b.Addr()), [NonceSize]byte{}, "alice", "hello")
	add(KindRequest, mustTarget(tb, "bob"), [NonceSize]byte{}, "", "")
	add(KindApprove, addressing.TargetAddr(b.Addr()), nonce(3), "", "ok")
	add(KindReject, addressing.TargetAddr(b.Addr()), nonce(4), "a", "")
	add(KindRevoke, addressing.TargetAddr(b.Addr()), [NonceSize]byte{}, "", strings.Repeat("n", MaxNoteLen))
	return out
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range validMessageSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			return
		}
		// Canonical: a parsed message re-encodes to exactly the input.
		enc, err := m.AppendBinary(nil)
		require.NoError(t, err)
		require.Equal(t, b, enc)
		m2, err := ParseMessage(enc)
		require.NoError(t, err)
		require.Equal(t, m.Time.UnixNano(), m2.Time.UnixNano())
		m.Time, m2.Time = time.Time{}, time.Time{}
		require.Equal(t, m, m2)
		_ = m.Verify() // must not panic
	})
}
