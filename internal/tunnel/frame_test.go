package tunnel

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFramesRoundTrip(t *testing.T) {
	var msg []byte
	payloads := [][]byte{{}, []byte("quic"), bytes.Repeat([]byte{7}, MaxPayload)}
	for i, p := range payloads {
		msg = AppendFrame(msg, byte(i+1), p)
	}
	for i, p := range payloads {
		kind, got, rest, err := NextFrame(msg)
		require.NoError(t, err)
		require.Equal(t, byte(i+1), kind)
		require.Equal(t, p, got)
		msg = rest
	}
	require.Empty(t, msg)
	for _, bad := range [][]byte{nil, {0}, {0, 0, 1}, {0, 5, 1, 2}, {0x08, 0x02, 1}} {
		_, _, _, err := NextFrame(bad)
		require.ErrorIs(t, err, ErrMalformed, "%x", bad)
	}
	require.True(t, IsTunnelAddr(Addr(42)))
}

func FuzzNextFrame(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, KindQUIC, []byte("abc")), KindRelay, nil))
	f.Add([]byte{0, 1, 9})
	f.Fuzz(func(t *testing.T, msg []byte) {
		orig := msg
		var re []byte
		for len(msg) > 0 {
			kind, p, rest, err := NextFrame(msg)
			if err != nil {
				break
			}
			if len(p) > MaxPayload || len(rest) >= len(msg) {
				t.Fatalf("frame of %d bytes, rest %d of %d", len(p), len(rest), len(msg))
			}
			re = AppendFrame(re, kind, p)
			msg = rest
		}
		// What parsed re-encodes to the same bytes.
		if !bytes.Equal(re, orig[:len(orig)-len(msg)]) {
			t.Fatalf("re-encoded %x, parsed from %x", re, orig[:len(orig)-len(msg)])
		}
	})
}
