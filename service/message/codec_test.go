package message

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Kind: KindText, Size: 5},
		{Kind: KindJSON, Size: 0},
		{Kind: KindBinary, Size: 1 << 40},
		{Kind: KindFile, Size: 123, Name: "report.pdf"},
		{Kind: KindFile, Size: 1, Name: string(bytes.Repeat([]byte("n"), MaxName))},
	} {
		b, err := AppendHeader(nil, h)
		require.NoError(t, err)
		got, err := ParseHeader(b)
		require.NoError(t, err)
		require.Equal(t, h, got)
		// Trailing bytes are ignored.
		got, err = ParseHeader(append(b, 1, 2, 3))
		require.NoError(t, err)
		require.Equal(t, h, got)
	}
}

func TestHeaderErrors(t *testing.T) {
	_, err := AppendHeader(nil, Header{Kind: 9})
	require.Error(t, err)
	_, err = AppendHeader(nil, Header{Kind: KindFile, Name: string(make([]byte, MaxName+1))})
	require.Error(t, err)
	good, _ := AppendHeader(nil, Header{Kind: KindFile, Size: 1, Name: "abc"})
	for name, b := range map[string][]byte{
		"empty":     nil,
		"short":     good[:5],
		"version":   append([]byte{2}, good[1:]...),
		"kind":      append([]byte{1, 0}, good[2:]...),
		"truncated": good[:len(good)-1],
	} {
		_, err := ParseHeader(b)
		require.ErrorIs(t, err, ErrMalformed, name)
	}
}

func TestAckRoundTrip(t *testing.T) {
	for _, a := range []Ack{
		{Status: StatusOK, ID: "18eb6ad85d1b8427de7c3d", Text: "x", Sum: [32]byte{1, 2, 3}},
		{Status: StatusTooLarge, Text: "too big"},
		{},
	} {
		b := AppendAck(nil, a)
		got, err := ParseAck(append(b, 0xff))
		require.NoError(t, err)
		require.Equal(t, a, got)
	}
	_, err := ParseAck([]byte{1, 0})
	require.ErrorIs(t, err, ErrMalformed)
}

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"../../x":          "x",
		"..\\..\\x":        "x",
		"/etc/passwd":      "passwd",
		"..":               "file",
		".":                "file",
		"":                 "file",
		"dir/":             "dir",
		"a\x00b\nc":        "a_b_c",
		"report.pdf":       "report.pdf",
		".bashrc":          ".bashrc",
		"  spaced  ":       "spaced",
		"\xff\xfe":         "_",
		"ok name (1).txt":  "ok name (1).txt",
		"../../../../../.": "file",
	} {
		require.Equal(t, want, SanitizeName(in), "%q", in)
	}
	long := SanitizeName(string(bytes.Repeat([]byte("é"), 300)))
	require.LessOrEqual(t, len(long), maxNameBytes)
}
