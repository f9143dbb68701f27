package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
)

// tcpServer runs serve for each connection to a TCP listener on 127.0.0.1.
func tcpServer(t *testing.T, serve func(c *net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c.(*net.TCPConn))
		}
	}()
	return l.Addr().String()
}

// resetTCP aborts c with a TCP reset.
func resetTCP(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// expose serves to on virtual port at d until the test ends.
func expose(t *testing.T, ctx context.Context, d *testDaemon, port int, to string) {
	t.Helper()
	s, err := d.c.Stream(ctx, "POST", ctl.PathExpose, ctl.ExposeRequest{Port: port, To: to})
	require.NoError(t, err)
	var ex ctl.Exposed
	require.NoError(t, s.Next(&ex))
	t.Cleanup(func() { s.Close() })
}

// forward listens locally on d for peer:port until the test ends.
func forward(t *testing.T, ctx context.Context, d *testDaemon, peer string, port int) string {
	t.Helper()
	s, err := d.c.Stream(ctx, "POST", ctl.PathForward, ctl.ForwardRequest{Listen: "127.0.0.1:0", Peer: peer, Port: port})
	require.NoError(t, err)
	var fw ctl.Forwarded
	require.NoError(t, s.Next(&fw))
	t.Cleanup(func() { s.Close() })
	return fw.Listen
}

// readUntilError reads c to its end and returns the bytes and how it ended.
func readUntilError(c io.Reader) (int64, error) {
	return io.Copy(io.Discard, c)
}

// TestConnectCutIsNotEOF: the TCP application behind bob's expose sends
// 1 MiB and then resets its connection. Alice's framed connect stream must
// end with a stream_reset error, not a clean EOF (before the fix: Read
// returned io.EOF after the bytes that made it, so "agentnet connect" exited
// 0 with a truncated file). A stream that ends cleanly still ends with EOF
// and Wait confirms both directions.
func TestConnectCutIsNotEOF(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	chunk := make([]byte, 1<<20)
	rand.Read(chunk)
	app := tcpServer(t, func(c *net.TCPConn) {
		var hello [5]byte
		if _, err := io.ReadFull(c, hello[:]); err != nil {
			c.Close()
			return
		}
		switch string(hello[:]) {
		case "cut!!":
			c.Write(chunk)
			time.Sleep(50 * time.Millisecond)
			resetTCP(c)
		default: // "whole": everything, then a clean end
			c.Write(chunk)
			c.Close()
		}
	})
	expose(t, ctx, b, 5000, app)

	c, err := a.c.Connect(ctx, ctl.ConnectRequest{Peer: "bob", Port: 5000})
	require.NoError(t, err)
	require.True(t, c.Framed())
	_, err = c.Write([]byte("cut!!"))
	require.NoError(t, err)
	n, err := readUntilError(c)
	require.Error(t, err, "a cut stream must not end like a clean one (read %d bytes)", n)
	require.Equal(t, ctl.CodeStreamReset, ctl.CodeOf(err), "%v", err)
	c.Abort()

	c, err = a.c.Connect(ctx, ctl.ConnectRequest{Peer: "bob", Port: 5000})
	require.NoError(t, err)
	_, err = c.Write([]byte("whole"))
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.True(t, bytes.Equal(chunk, got))
	require.NoError(t, c.Wait(), "both directions ended cleanly")
	c.Close()
}

// TestConnectPeerDaemonStops: bob's daemon shuts down while alice reads a
// stream from it; her stream ends with an error, not EOF.
func TestConnectPeerDaemonStops(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := tcpServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				c.Close()
				return
			}
		}
	})
	expose(t, ctx, b, 5000, app)
	c, err := a.c.Connect(ctx, ctl.ConnectRequest{Peer: "bob", Port: 5000})
	require.NoError(t, err)
	defer c.Abort()
	_, err = io.ReadFull(c, make([]byte, 1<<20))
	require.NoError(t, err)
	b.stop()
	_, err = readUntilError(c)
	require.Error(t, err)
	require.Contains(t, []ctl.Code{ctl.CodeStreamReset, ctl.CodeUnreachable}, ctl.CodeOf(err), "%v", err)
}

// TestConnectClientAbortResetsPeer: a framed client that aborts (or dies:
// its socket closes without an EOF frame) resets the stream at the peer,
// whose TCP application behind expose sees a reset, not a FIN.
func TestConnectClientAbortResetsPeer(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ended := make(chan error, 4)
	app := tcpServer(t, func(c *net.TCPConn) {
		_, err := readUntilError(c)
		ended <- err
		c.Close()
	})
	expose(t, ctx, b, 5000, app)
	for _, how := range []string{"abort", "close the socket"} {
		c, err := a.c.Connect(ctx, ctl.ConnectRequest{Peer: "bob", Port: 5000})
		require.NoError(t, err)
		_, err = c.Write(make([]byte, 256<<10))
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond)
		if how == "abort" {
			c.Abort()
		} else {
			c.Conn.Close() // the process died: no EOF frame
		}
		select {
		case err := <-ended:
			require.True(t, errors.Is(err, syscall.ECONNRESET), "%s: the app must see a reset, got %v", how, err)
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: the app's connection did not end", how)
		}
	}
}

// TestTunnelCutResetsTCP runs a TCP client through alice's forward to a TCP
// server behind bob's expose and cuts the connection at either end with a
// TCP reset: the program at the other end must see a reset (ECONNRESET)
// too, not a clean FIN (before the fix it got a FIN and could not tell a
// cut from the end: issue 9 measured one at byte 49 861 295 of 209 715 200).
// Then bob's daemon stops mid-transfer: alice's TCP client sees a reset.
func TestTunnelCutResetsTCP(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	serverEnded := make(chan error, 4)
	app := tcpServer(t, func(c *net.TCPConn) {
		var mode [1]byte
		if _, err := io.ReadFull(c, mode[:]); err != nil {
			c.Close()
			return
		}
		switch mode[0] {
		case 'r': // read until the client's end
			_, err := readUntilError(c)
			serverEnded <- err
			c.Close()
		case 'w': // send a lot, then reset
			c.Write(make([]byte, 1<<20))
			resetTCP(c)
		case 's': // send until the connection breaks
			buf := make([]byte, 64<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					c.Close()
					return
				}
			}
		}
	})
	expose(t, ctx, b, 80, app)
	listen := forward(t, ctx, a, "bob", 80)
	dial := func(mode byte) *net.TCPConn {
		c, err := net.Dial("tcp", listen)
		require.NoError(t, err)
		_, err = c.Write([]byte{mode})
		require.NoError(t, err)
		return c.(*net.TCPConn)
	}

	// The client resets: the server behind expose sees a reset.
	c := dial('r')
	_, err := c.Write(make([]byte, 1<<20))
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	resetTCP(c)
	select {
	case err := <-serverEnded:
		require.True(t, errors.Is(err, syscall.ECONNRESET), "server: want a reset, got %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the server's connection did not end")
	}

	// The server resets: the client of forward sees a reset.
	c = dial('w')
	n, err := readUntilError(c)
	require.True(t, errors.Is(err, syscall.ECONNRESET), "client: want a reset after %d bytes, got %v", n, err)
	c.Close()

	// A clean end stays clean both ways.
	c = dial('r')
	_, err = c.Write([]byte("all of it"))
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	select {
	case err := <-serverEnded:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the server's connection did not end")
	}
	c.Close()

	// Bob's daemon stops mid-transfer: the client sees a reset.
	c = dial('s')
	_, err = io.ReadFull(c, make([]byte, 1<<20))
	require.NoError(t, err)
	b.stop()
	n, err = readUntilError(c)
	require.True(t, errors.Is(err, syscall.ECONNRESET), "client: want a reset after %d more bytes, got %v", n, err)
	c.Close()
}
