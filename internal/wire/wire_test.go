package wire

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReader(t *testing.T) {
	r := NewReader([]byte{1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 9, 9})
	require.Equal(t, byte(1), r.Byte())
	require.Equal(t, uint16(2), r.Uint16())
	require.Equal(t, uint64(3), r.Uint64())
	require.Equal(t, 2, r.Len())
	var two [2]byte
	r.Copy(two[:])
	require.Equal(t, [2]byte{9, 9}, two)
	require.NoError(t, r.Err())
	require.Equal(t, uint16(0), r.Uint16(), "past the end")
	require.ErrorIs(t, r.Err(), ErrShort)
	require.Nil(t, r.Next(0), "every read fails after the first failure")

	r = NewReader([]byte{1})
	r.Fail(errors.New("first"))
	r.Fail(errors.New("second"))
	require.EqualError(t, r.Err(), "first")
	require.Nil(t, NewReader([]byte{1}).Next(-1))
}
