package probe

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	tok := [TokenSize]byte{1, 2, 3}
	b := Append(nil, tok, KindPing, [6]byte{9, 8, 7, 6, 5, 4}, 42)
	require.Len(t, b, Len)
	p, err := Parse(b)
	require.NoError(t, err)
	require.Equal(t, Probe{Kind: KindPing, TokenID: TokenID(tok), Sender: [6]byte{9, 8, 7, 6, 5, 4}, Seq: 42}, p)
	require.NoError(t, Verify(b, tok))
	require.ErrorIs(t, Verify(b, [TokenSize]byte{1, 2, 4}), ErrBadMAC)
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if _, err := Parse(c); err == nil {
			require.Error(t, Verify(c, tok), "byte %d", i)
		}
	}
	_, err = Parse(b[:Len-1])
	require.ErrorIs(t, err, ErrMalformed)
}

func FuzzParse(f *testing.F) {
	tok := [TokenSize]byte{7}
	f.Add(Append(nil, tok, KindPing, [6]byte{1}, 1))
	f.Add(Append(nil, tok, KindPong, [6]byte{2}, 1<<63))
	f.Add([]byte{Type, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if Verify(b, tok) == nil {
			// Only a genuine probe verifies: re-encoding gives the same bytes.
			if got := Append(nil, tok, p.Kind, p.Sender, p.Seq); !bytes.Equal(got, b[:Len]) {
				t.Fatalf("verified probe does not re-encode: %x vs %x", b, got)
			}
		}
	})
}
