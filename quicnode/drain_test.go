package quicnode

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCloseDrainsStreamData: a node that writes a stream, closes it and
// closes itself at once still delivers every byte (Close drains before it
// closes the connections). Before the drain, Close cut the transfer in
// most runs: the receiver got a truncated stream and a connection error.
func TestCloseDrainsStreamData(t *testing.T) {
	checkNoLeaks(t)
	srv := startServer(t)
	b := startNode(t, srv, "")
	ln, err := b.Listen(7000)
	require.NoError(t, err)
	payload := make([]byte, 2<<20)
	rand.Read(payload)
	const runs = 5
	for run := range runs {
		a := startNode(t, srv, "")
		establishTrust(t, a, b, b.Addr().String())
		ctx := ctxT(t, 20*time.Second)
		got := make(chan []byte, 1)
		errc := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			data, err := io.ReadAll(c)
			if err != nil {
				errc <- err
				return
			}
			got <- data
		}()
		c, err := a.Dial(ctx, b.Addr().String(), 7000)
		require.NoError(t, err)
		_, err = c.Write(payload)
		require.NoError(t, err)
		require.NoError(t, c.Close())
		start := time.Now()
		require.NoError(t, a.Node.Close())
		took := time.Since(start)
		select {
		case data := <-got:
			require.Equal(t, len(payload), len(data), "run %d: bytes delivered", run)
			require.True(t, bytes.Equal(payload, data), "run %d: data differs", run)
		case err := <-errc:
			require.NoError(t, err, "run %d: the receiver's stream broke (Close took %v)", run, took)
		case <-ctx.Done():
			t.Fatalf("run %d: nothing received", run)
		}
		require.Less(t, took, CloseDrain+time.Second, "run %d: the drain is bounded", run)
	}
}
