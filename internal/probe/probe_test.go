package probe

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	tok := [TokenSize]byte{1, 2, 3}
	sender := [NodeSize]byte{9, 8, 7, 6, 5, 4}
	b := Append(nil, tok, KindPing, sender, 42)
	require.Len(t, b, Len)
	p, err := Parse(b)
	require.NoError(t, err)
	require.Equal(t, Probe{Kind: KindPing, Session: SessionID(tok, sender), Seq: 42}, p)
	require.NoError(t, Verify(b, tok, sender))
	require.ErrorIs(t, Verify(b, [TokenSize]byte{1, 2, 4}, sender), ErrBadMAC)
	require.ErrorIs(t, Verify(b, tok, [NodeSize]byte{9, 8, 7, 6, 5, 5}), ErrBadMAC, "bound to the sender")
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		require.Error(t, Verify(c, tok, sender), "byte %d", i)
	}
	_, err = Parse(b[:Len-1])
	require.ErrorIs(t, err, ErrMalformed)
	require.ErrorIs(t, Verify(b[:Len-1], tok, sender), ErrMalformed)
	long := append(bytes.Clone(b), 0xff)
	require.NoError(t, Verify(long, tok, sender), "trailing bytes are ignored")
}

// TestUnlinkable: nothing in a probe names its sender, and what it does
// carry is specific to one introduction and one direction.
func TestUnlinkable(t *testing.T) {
	sender := [NodeSize]byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	peer := [NodeSize]byte{1, 2, 3, 4, 5, 6}
	t1, t2 := [TokenSize]byte{1}, [TokenSize]byte{2}
	a := Append(nil, t1, KindPing, sender, 1)
	b := Append(nil, t2, KindPing, sender, 1)
	require.False(t, bytes.Contains(a, sender[:]), "the sender's NodeID travels in clear")
	pa, _ := Parse(a)
	pb, _ := Parse(b)
	require.NotEqual(t, pa.Session, pb.Session, "two introductions share a session ID")
	require.NotEqual(t, a[18:], b[18:])
	require.NotEqual(t, SessionID(t1, sender), SessionID(t1, peer), "both directions share a session ID")
	// A probe reflected back to its sender does not verify as the peer's.
	require.Error(t, Verify(a, t1, peer))
}

func FuzzParse(f *testing.F) {
	tok := [TokenSize]byte{7}
	sender := [NodeSize]byte{1}
	f.Add(Append(nil, tok, KindPing, sender, 1))
	f.Add(Append(nil, tok, KindPong, sender, 1<<63))
	f.Add([]byte{Type, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		verr := Verify(b, tok, sender)
		if err != nil {
			if verr == nil && len(b) >= Len && b[0] == Type {
				t.Fatalf("unparseable probe %x verifies", b)
			}
			return
		}
		if verr == nil {
			// Only a genuine probe verifies: re-encoding gives the same bytes.
			if got := Append(nil, tok, p.Kind, sender, p.Seq); !bytes.Equal(got, b[:Len]) {
				t.Fatalf("verified probe does not re-encode: %x vs %x", b, got)
			}
		}
	})
}
