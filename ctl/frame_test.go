package ctl

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func validFrames(t testing.TB) [][]byte {
	var out [][]byte
	add := func(ft FrameType, p []byte) {
		b, err := AppendFrame(nil, ft, p)
		require.NoError(t, err)
		out = append(out, b)
	}
	add(FrameData, []byte("hello"))
	add(FrameData, bytes.Repeat([]byte{0xab}, MaxFrameData))
	add(FrameEOF, nil)
	add(FrameDone, nil)
	add(FrameReset, nil)
	out = append(out, AppendReset(nil, &Error{Code: CodeStreamReset, Message: "the peer reset the stream", Hint: StreamResetHint}))
	return out
}

func TestFrameRoundTrip(t *testing.T) {
	buf := make([]byte, MaxFrameData)
	for _, f := range validFrames(t) {
		ft, p, err := ReadFrame(bytes.NewReader(f), buf)
		require.NoError(t, err)
		again, err := AppendFrame(nil, ft, p)
		require.NoError(t, err)
		require.Equal(t, f, again)
	}
	// A RESET carries the error; an empty one is a plain stream_reset.
	f := AppendReset(nil, &Error{Code: CodeNotTrusted, Message: "revoked"})
	_, p, err := ReadFrame(bytes.NewReader(f), buf)
	require.NoError(t, err)
	require.Equal(t, &Error{Code: CodeNotTrusted, Message: "revoked"}, ParseReset(p))
	require.Equal(t, CodeStreamReset, ParseReset(nil).Code)
	require.Equal(t, CodeStreamReset, ParseReset([]byte("{garbage")).Code)
	// An error too long for a frame is cut to fit.
	long := AppendReset(nil, &Error{Code: CodeStreamReset, Message: strings.Repeat("x", 10000), Hint: strings.Repeat("y", 10000)})
	_, p, err = ReadFrame(bytes.NewReader(long), buf)
	require.NoError(t, err)
	require.LessOrEqual(t, len(p), MaxResetPayload)
	require.Equal(t, CodeStreamReset, ParseReset(p).Code)
}

func TestFrameInvalid(t *testing.T) {
	buf := make([]byte, MaxFrameData)
	for name, b := range map[string][]byte{
		"unknown type":    {0x09, 0, 0},
		"type zero":       {0x00, 0, 1, 'x'},
		"empty DATA":      {byte(FrameData), 0, 0},
		"EOF with data":   {byte(FrameEOF), 0, 1, 'x'},
		"DONE with data":  {byte(FrameDone), 0, 1, 'x'},
		"RESET too large": {byte(FrameReset), 0x10, 0x01},
	} {
		_, _, err := ReadFrame(bytes.NewReader(b), buf)
		require.ErrorIs(t, err, ErrFrame, name)
	}
	_, _, err := ReadFrame(bytes.NewReader([]byte{byte(FrameData), 0, 5, 'a'}), buf)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "truncated payload")
	_, _, err = ReadFrame(bytes.NewReader([]byte{byte(FrameData)}), buf)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "truncated header")
	_, _, err = ReadFrame(bytes.NewReader(nil), buf)
	require.ErrorIs(t, err, io.EOF)
	_, err = AppendFrame(nil, FrameData, make([]byte, MaxFrameData+1))
	require.ErrorIs(t, err, ErrFrame)
}

// FuzzReadFrame reads frames from arbitrary bytes: it never panics, errors
// are ErrFrame or an unexpected end, and every frame read re-encodes to the
// bytes it came from.
func FuzzReadFrame(f *testing.F) {
	for _, s := range validFrames(f) {
		f.Add(s)
	}
	f.Add(append(validFrames(f)[0], validFrames(f)[2]...))
	f.Add([]byte{})
	f.Add([]byte{0x01, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		buf := make([]byte, MaxFrameData)
		var again []byte
		for {
			ft, p, err := ReadFrame(r, buf)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					require.True(t, errors.Is(err, ErrFrame) || errors.Is(err, io.ErrUnexpectedEOF), "%v", err)
				} else {
					require.True(t, bytes.Equal(b, again), "frames re-encode to their bytes")
				}
				return
			}
			again, err = AppendFrame(again, ft, p)
			require.NoError(t, err)
			if ft == FrameReset {
				require.NotEmpty(t, ParseReset(p).Code)
			}
		}
	})
}

// scriptedConn is a framed Conn whose daemon side writes raw bytes.
func scriptedConn(t *testing.T, daemon []byte, closeAfter bool) *Conn {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		b.Write(daemon)
		if closeAfter {
			b.Close()
		}
	}()
	t.Cleanup(func() { a.Close(); b.Close() })
	return &Conn{Conn: a, r: bufio.NewReader(a), framed: true}
}

// TestConnEnds: the client tells a clean end from every kind of cut.
func TestConnEnds(t *testing.T) {
	data, _ := AppendFrame(nil, FrameData, []byte("abc"))
	eof, _ := AppendFrame(nil, FrameEOF, nil)
	done, _ := AppendFrame(nil, FrameDone, nil)
	reset := AppendReset(nil, &Error{Code: CodeStreamReset, Message: "the peer reset the stream"})
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

	c := scriptedConn(t, cat(data, eof, done), true)
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "abc", string(got))
	require.NoError(t, c.Wait())

	c = scriptedConn(t, cat(data, reset), true)
	got, err = io.ReadAll(c)
	require.Equal(t, "abc", string(got))
	require.Equal(t, CodeStreamReset, CodeOf(err))

	c = scriptedConn(t, data, true) // the daemon died
	_, err = io.ReadAll(c)
	require.Equal(t, CodeUnavailable, CodeOf(err))

	c = scriptedConn(t, cat(data, eof), true) // EOF, but no DONE
	_, err = io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, CodeUnavailable, CodeOf(c.Wait()))

	c = scriptedConn(t, cat(data, eof, reset), true) // our side failed
	_, err = io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, CodeStreamReset, CodeOf(c.Wait()))

	c = scriptedConn(t, cat(data, done), true) // DONE before EOF
	_, err = io.ReadAll(c)
	require.Equal(t, CodeStreamReset, CodeOf(err))

	c = scriptedConn(t, []byte{0x07, 0, 0}, true)
	_, err = io.ReadAll(c)
	require.Equal(t, CodeStreamReset, CodeOf(err))
}
