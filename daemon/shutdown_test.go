package daemon

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
)

// TestShutdownEndsStreams stops a daemon while every kind of long-lived
// request is open: Run returns promptly, the clients see their streams end,
// and no goroutine is left.
func TestShutdownEndsStreams(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer tcp.Close()
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	var streams []*ctl.Stream
	open := func(d *testDaemon, path string, req any) {
		s, err := d.c.Stream(ctx, "POST", path, req)
		require.NoError(t, err)
		streams = append(streams, s)
	}
	open(a, ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: []string{">"}})
	open(a, ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: []string{">"}, From: "bob"})
	open(a, ctl.PathRecv, ctl.RecvRequest{Port: 4000})
	open(b, ctl.PathExpose, ctl.ExposeRequest{Port: 80, To: tcp.Addr().String()})
	open(a, ctl.PathForward, ctl.ForwardRequest{Listen: "127.0.0.1:0", Peer: "bob", Port: 80})
	var fw ctl.Forwarded
	require.NoError(t, streams[len(streams)-1].Next(&fw))

	// A connection through the forward, and a connect stream, both open.
	tc, err := net.Dial("tcp", fw.Listen)
	require.NoError(t, err)
	defer tc.Close()
	_, err = tc.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(tc, buf)
	require.NoError(t, err)
	cc, err := a.c.Connect(ctx, ctl.ConnectRequest{Peer: "bob", Port: 7})
	require.NoError(t, err)
	defer cc.Close()

	t0 := time.Now()
	a.stop()
	b.stop()
	require.Less(t, time.Since(t0), 5*time.Second, "shutdown took too long")
	for _, s := range streams {
		var v map[string]any
		for s.Next(&v) == nil {
		}
		s.Close()
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = tc.Read(buf)
	require.Error(t, err, "the forwarded connection ends")
	cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = cc.Read(buf)
	require.Error(t, err, "the connect stream ends")
}

// TestTunnelEndClosesConnections: ending a forward request closes the
// connections it carries, and frees its port.
func TestTunnelEndClosesConnections(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ex, err := b.c.Stream(ctx, "POST", ctl.PathExpose, ctl.ExposeRequest{Port: 7000, To: "127.0.0.1:9"}) // nothing there
	require.NoError(t, err)
	defer ex.Close()
	fw, err := a.c.Stream(ctx, "POST", ctl.PathForward, ctl.ForwardRequest{Listen: "127.0.0.1:0", Peer: "bob", Port: 7})
	require.NoError(t, err)
	var f ctl.Forwarded
	require.NoError(t, fw.Next(&f))
	tc, err := net.Dial("tcp", f.Listen)
	require.NoError(t, err)
	defer tc.Close()
	_, err = tc.Write([]byte("abcd"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(tc, buf)
	require.NoError(t, err)
	require.Equal(t, "abcd", string(buf))

	fw.Close()
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = tc.Read(buf)
	require.Error(t, err, "the forwarded connection ends with the forward")
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", f.Listen)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 5*time.Second, 20*time.Millisecond, "the local port is freed")

	// The virtual port of a finished expose can be taken again; while it
	// runs, a second expose of it is port_in_use.
	_, err = b.c.Stream(ctx, "POST", ctl.PathExpose, ctl.ExposeRequest{Port: 7000, To: "127.0.0.1:9"})
	requireCode(t, err, ctl.CodePortInUse)
	ex.Close()
	require.Eventually(t, func() bool {
		s, err := b.c.Stream(ctx, "POST", ctl.PathExpose, ctl.ExposeRequest{Port: 7000, To: "127.0.0.1:9"})
		if err == nil {
			s.Close()
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
}
