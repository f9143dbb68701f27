package message

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// serve runs a Server on a loopback TCP listener.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Serve(l) }()
	t.Cleanup(func() { s.Close(); wg.Wait() })
	return l.Addr().String()
}

func send(t *testing.T, addr string, h Header, body []byte) (Ack, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return Send(ctx, c, h, bytes.NewReader(body))
}

func TestSendReceive(t *testing.T) {
	in, err := OpenInbox(t.TempDir(), 0)
	require.NoError(t, err)
	var got []Item
	var mu sync.Mutex
	addr := serve(t, &Server{Inbox: in, ReceiveFunc: func(it Item) { mu.Lock(); got = append(got, it); mu.Unlock() }})

	a, err := send(t, addr, Header{Kind: KindText, Size: 5}, []byte("hello"))
	require.NoError(t, err)
	it, err := in.Get(a.ID)
	require.NoError(t, err)
	require.Equal(t, "text", it.KindName)
	b, err := os.ReadFile(it.Path)
	require.NoError(t, err)
	require.Equal(t, "hello", string(b))

	data := make([]byte, 1<<20)
	rand.Read(data)
	a, err = send(t, addr, Header{Kind: KindFile, Size: uint64(len(data)), Name: "../../x"}, data)
	require.NoError(t, err)
	require.Equal(t, "x", a.Text)
	it, err = in.Get(a.ID)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(in.Dir(), "files", "x"), it.Path)
	// The same name again gets a new one; nothing is overwritten.
	a, err = send(t, addr, Header{Kind: KindFile, Size: 3, Name: "x"}, []byte("abc"))
	require.NoError(t, err)
	require.Equal(t, "x (1)", a.Text)
	b, _ = os.ReadFile(filepath.Join(in.Dir(), "files", "x"))
	require.True(t, bytes.Equal(data, b))

	// Invalid content is refused.
	_, err = send(t, addr, Header{Kind: KindJSON, Size: 3}, []byte("{x}"))
	require.ErrorIs(t, err, ErrBadRequest)
	require.Len(t, in.List(), 3)
	mu.Lock()
	require.Len(t, got, 3)
	mu.Unlock()

	// The index survives a reopen; delete removes the content.
	in2, err := OpenInbox(in.Dir(), 0)
	require.NoError(t, err)
	require.Equal(t, in.Bytes(), in2.Bytes())
	_, err = in2.Delete(a.ID)
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(in.Dir(), "files", "x (1)"))
	require.True(t, os.IsNotExist(err))
	_, err = in2.Delete(a.ID)
	require.ErrorIs(t, err, ErrNotFound)
}

func TestLimits(t *testing.T) {
	in, err := OpenInbox(t.TempDir(), 1000)
	require.NoError(t, err)
	addr := serve(t, &Server{Inbox: in, Limits: Limits{MaxMessage: 100}})
	// The header is refused before the body: a small message with a big
	// declared size never has to be sent.
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	hb, _ := AppendHeader(nil, Header{Kind: KindBinary, Size: 101})
	_, err = c.Write(appendFrame(nil, hb))
	require.NoError(t, err)
	fb, err := readFrame(c)
	require.NoError(t, err)
	a, err := ParseAck(fb)
	require.NoError(t, err)
	require.Equal(t, StatusTooLarge, a.Status)
	c.Close()

	_, err = send(t, addr, Header{Kind: KindFile, Size: 2000}, make([]byte, 2000))
	require.True(t, errors.Is(err, ErrInboxFull), "%v", err)
	require.Empty(t, in.List())

	// A wrong checksum is refused and leaves nothing behind.
	c, err = net.Dial("tcp", addr)
	require.NoError(t, err)
	hb, _ = AppendHeader(nil, Header{Kind: KindBinary, Size: 3})
	c.Write(append(appendFrame(nil, hb), append([]byte("abc"), make([]byte, 32)...)...))
	fb, err = readFrame(c)
	require.NoError(t, err)
	a, _ = ParseAck(fb)
	require.Equal(t, StatusChecksum, a.Status)
	c.Close()
	require.Empty(t, in.List())
	ents, _ := os.ReadDir(filepath.Join(in.Dir(), ".tmp"))
	require.Empty(t, ents)
}
