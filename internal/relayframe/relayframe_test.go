package relayframe

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBind(t *testing.T) {
	sec := [SecretSize]byte{1}
	s := Session{1, 2, 3, 4, 5, 6, 7, 8}
	b := AppendBind(nil, s, 1, 99, sec)
	require.Len(t, b, BindLen)
	f, err := ParseBind(b)
	require.NoError(t, err)
	require.Equal(t, Bind{Session: s, Side: 1, Counter: 99}, f)
	require.NoError(t, VerifyBind(b, sec))
	require.ErrorIs(t, VerifyBind(b, [SecretSize]byte{2}), ErrBadMAC)
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 1
		if _, err := ParseBind(c); err == nil {
			require.Error(t, VerifyBind(c, sec), "flipped byte %d", i)
		}
	}
	ok := AppendBindOK(nil, s, 0, 7)
	f, err = ParseBind(ok)
	require.NoError(t, err)
	require.Equal(t, Bind{Session: s, Side: 0, Counter: 7}, f)
	_, err = ParseBind(ok[:BindOKLen-1])
	require.ErrorIs(t, err, ErrMalformed)
}

func TestData(t *testing.T) {
	s := Session{9}
	b := AppendData(nil, s, []byte("quic"))
	got, p, err := ParseData(b)
	require.NoError(t, err)
	require.Equal(t, s, got)
	require.Equal(t, []byte("quic"), p)
	_, _, err = ParseData(make([]byte, MaxFrameSize+1))
	require.Error(t, err)
	sid, ok := SessionOf(b)
	require.True(t, ok)
	require.Equal(t, s, sid)
	_, ok = SessionOf([]byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8})
	require.False(t, ok)
}

func FuzzParse(f *testing.F) {
	sec := [SecretSize]byte{3}
	f.Add(AppendBind(nil, Session{1}, 0, 1, sec))
	f.Add(AppendBindOK(nil, Session{1}, 1, 2))
	f.Add(AppendData(nil, Session{1}, []byte("x")))
	f.Add([]byte{TypeBind, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if bf, err := ParseBind(b); err == nil {
			var again []byte
			if b[0] == TypeBindOK {
				again = AppendBindOK(nil, bf.Session, bf.Side, bf.Counter)
			} else if VerifyBind(b, sec) == nil {
				again = AppendBind(nil, bf.Session, bf.Side, bf.Counter, sec)
			}
			if again != nil && !bytes.Equal(again, b[:len(again)]) {
				t.Fatalf("bind round trip: %x vs %x", b, again)
			}
		}
		if s, p, err := ParseData(b); err == nil {
			if !bytes.Equal(AppendData(nil, s, p), b) {
				t.Fatalf("data round trip")
			}
		}
		SessionOf(b)
	})
}
