package vport

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStreamHeader(t *testing.T) {
	b := AppendStreamHeader(nil, StreamHeader{Dst: 80, Src: 49152})
	require.Equal(t, []byte{1, 0, 80, 0xc0, 0}, b)
	h, err := ParseStreamHeader(b)
	require.NoError(t, err)
	require.Equal(t, StreamHeader{Dst: 80, Src: 49152}, h)
	_, err = ParseStreamHeader(b[:4])
	require.ErrorIs(t, err, ErrShort)
	h, err = ParseStreamHeader([]byte{2, 0, 80, 0, 1})
	require.NoError(t, err)
	require.Equal(t, StreamHeader{Dst: 80, Src: 1, Pipelined: true}, h)
	require.Equal(t, []byte{2, 0, 80, 0, 1}, AppendStreamHeader(nil, h))
	_, err = ParseStreamHeader([]byte{3, 0, 80, 0, 1})
	require.Error(t, err)
	_, err = ParseStreamHeader([]byte{0, 0, 80, 0, 1})
	require.Error(t, err)
}

func TestDatagram(t *testing.T) {
	b := AppendDatagram(nil, 7, 1234, []byte("hi"))
	dst, src, p, err := ParseDatagram(b)
	require.NoError(t, err)
	require.Equal(t, uint16(7), dst)
	require.Equal(t, uint16(1234), src)
	require.Equal(t, []byte("hi"), p)
	_, _, _, err = ParseDatagram(b[:3])
	require.ErrorIs(t, err, ErrShort)
	_, _, _, err = ParseDatagram(make([]byte, 4000))
	require.Error(t, err)
}

func FuzzParseStreamHeader(f *testing.F) {
	f.Add(AppendStreamHeader(nil, StreamHeader{Dst: 7, Src: 50000}))
	f.Add([]byte{1, 0})
	f.Add([]byte{9, 0, 0, 0, 0})
	f.Add(AppendStreamHeader(nil, StreamHeader{Dst: 80, Src: 49152, Pipelined: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseStreamHeader(b)
		if err != nil {
			return
		}
		if got := AppendStreamHeader(nil, h); !bytes.Equal(got, b[:StreamHeaderLen]) {
			t.Fatalf("round trip: %x -> %+v -> %x", b, h, got)
		}
	})
}

func FuzzParseDatagram(f *testing.F) {
	f.Add(AppendDatagram(nil, 7, 50000, []byte("payload")))
	f.Add([]byte{0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		dst, src, p, err := ParseDatagram(b)
		if err != nil {
			return
		}
		if got := AppendDatagram(nil, dst, src, p); !bytes.Equal(got, b) {
			t.Fatalf("round trip: %x -> %x", b, got)
		}
	})
}
