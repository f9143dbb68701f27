package trustdb

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
)

// validRecords returns one record of each shape.
func validRecords(tb testing.TB) []Record {
	tb.Helper()
	us, peer := newTestIdentity(tb), newTestIdentity(tb)
	req := peerMsg(tb, peer, KindRequest, addressing.TargetAddr(us.Addr()), [NonceSize]byte{}, "peer", time.Now())
	enc, err := req.AppendBinary(nil)
	require.NoError(tb, err)
	now := time.Unix(0, time.Now().UnixNano())
	return []Record{
		{Target: "bob", Hostname: "bob", State: StatePendingOut, Nonce: nonce(1), Note: "hi", Created: now, Updated: now},
		{Target: peer.Addr().String(), State: StatePendingOut, Nonce: nonce(2), Created: now, Updated: now},
		{Key: peer.PublicKey(), Hostname: "peer", State: StatePendingIn, Nonce: req.Nonce, Note: req.Note, Consent: enc, PeerTime: req.Time, Created: now, Updated: now.Add(time.Second)},
		{Key: peer.PublicKey(), Target: "peer", State: StateTrusted, Nonce: nonce(3), Consent: enc, PeerTime: req.Time, Created: now, Updated: now},
		{Key: peer.PublicKey(), State: StateRevoked, Note: strings.Repeat("é", MaxNoteLen/2)},
		{Key: peer.PublicKey(), State: StateRejected, Hostname: strings.Repeat("a", 63)},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range validRecords(t) {
		t.Run(r.String(), func(t *testing.T) {
			enc, err := r.AppendBinary(nil)
			require.NoError(t, err)
			require.Equal(t, byte(2), enc[0])
			got, err := ParseRecord(enc)
			require.NoError(t, err)
			require.Equal(t, r, got)
			// Forward compatible: later versions may append fields.
			got, err = ParseRecord(append(enc, 1, 2, 3))
			require.NoError(t, err)
			require.Equal(t, r, got)
			for n := range len(enc) {
				_, err := ParseRecord(enc[:n])
				require.ErrorIs(t, err, ErrMalformed, "truncated to %d", n)
			}
		})
	}
}

// encodeV1 encodes r in the record format of version 1 (no flags byte).
func encodeV1(tb testing.TB, r Record) []byte {
	tb.Helper()
	enc, err := r.AppendBinary(nil)
	require.NoError(tb, err)
	enc = enc[:len(enc)-1]
	enc[0] = recordVersionV1
	return enc
}

// TestRecordVersion1 checks that records written before the flags byte
// still parse, as records of peers we may have trusted (so that none of
// them expires), and that the flags byte round-trips.
func TestRecordVersion1(t *testing.T) {
	for _, r := range validRecords(t) {
		got, err := ParseRecord(encodeV1(t, r))
		require.NoError(t, err)
		require.True(t, got.EverTrusted, "a version 1 record never expires")
		got.EverTrusted = false
		require.Equal(t, r, got)

		r.EverTrusted = true
		enc, err := r.AppendBinary(nil)
		require.NoError(t, err)
		got, err = ParseRecord(enc)
		require.NoError(t, err)
		require.Equal(t, r, got)
		enc[len(enc)-1] = 0x02
		_, err = ParseRecord(enc)
		require.ErrorIs(t, err, ErrMalformed, "unknown flags")
	}
}

func TestRecordInvalid(t *testing.T) {
	good := validRecords(t)
	other := newTestIdentity(t)
	tests := []struct {
		name string
		mod  func(r *Record)
	}{
		{"state 0", func(r *Record) { r.State = 0 }},
		{"state 6", func(r *Record) { r.State = 6 }},
		{"zero key not pending-out", func(r *Record) { r.Key = addressing.PublicKey{} }},
		{"bad hostname", func(r *Record) { r.Hostname = "Bad!" }},
		{"bad target", func(r *Record) { r.Target = "0:zzzz" }},
		{"long note", func(r *Record) { r.Note = strings.Repeat("x", MaxNoteLen+1) }},
		{"consent garbage", func(r *Record) { r.Consent = []byte{1, 2, 3} }},
		{"consent from another key", func(r *Record) { r.Key = other.PublicKey() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good[2]
			tt.mod(&r)
			_, err := r.AppendBinary(nil)
			require.Error(t, err)
		})
	}
	t.Run("pending-out without target", func(t *testing.T) {
		r := good[0]
		r.Target = ""
		_, err := r.AppendBinary(nil)
		require.Error(t, err)
	})
	t.Run("unknown version", func(t *testing.T) {
		enc, err := good[0].AppendBinary(nil)
		require.NoError(t, err)
		enc[0] = 3
		_, err = ParseRecord(enc)
		require.ErrorIs(t, err, ErrMalformed)
	})
}

func TestStateText(t *testing.T) {
	for s := StatePendingOut; s <= StateRejected; s++ {
		b, err := s.MarshalText()
		require.NoError(t, err)
		var got State
		require.NoError(t, got.UnmarshalText(b))
		require.Equal(t, s, got)
	}
	require.Equal(t, []string{"pending-out", "pending-in", "trusted", "revoked", "rejected"},
		[]string{StatePendingOut.String(), StatePendingIn.String(), StateTrusted.String(), StateRevoked.String(), StateRejected.String()})
	var s State
	require.Error(t, s.UnmarshalText([]byte("bogus")))
	_, err := State(0).MarshalText()
	require.Error(t, err)
}

func validRecordSeeds(tb testing.TB) [][]byte {
	var out [][]byte
	for i, r := range validRecords(tb) {
		r.EverTrusted = i%2 == 0
		enc, err := r.AppendBinary(nil)
		require.NoError(tb, err)
		out = append(out, enc, encodeV1(tb, r))
	}
	return out
}

func FuzzParseRecord(f *testing.F) {
	for _, s := range validRecordSeeds(f) {
		f.Add(s)
		f.Add(append(bytes.Clone(s), 0xff))
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			return
		}
		enc, err := r.AppendBinary(nil)
		require.NoError(t, err)
		if b[0] == recordVersionV1 {
			// Re-encoded in the current version: the same fields, plus the
			// flags byte version 1 lacked.
			require.True(t, r.EverTrusted)
			v1 := bytes.Clone(enc[:len(enc)-1])
			v1[0] = recordVersionV1
			require.LessOrEqual(t, len(v1), len(b))
			require.Equal(t, b[:len(v1)], v1, "canonical up to the ignored trailing bytes")
		} else {
			require.LessOrEqual(t, len(enc), len(b))
			require.Equal(t, b[:len(enc)], enc, "canonical up to the ignored trailing bytes")
		}
		r2, err := ParseRecord(enc)
		require.NoError(t, err)
		require.Equal(t, r, r2)
	})
}
