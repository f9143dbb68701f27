package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// testServer is a TLS listener serving a tunnel Server whose relay frames
// are echoed back to their tunnel, with a QUIC echo server on its QUIC
// PacketConn.
type testServer struct {
	addr string
	key  addressing.PublicKey
	srv  *Server
}

func startTestServer(t *testing.T) *testServer {
	t.Helper()
	id, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	cert, err := certs.Certificate(id.PrivateKey())
	require.NoError(t, err)
	ts := &testServer{key: id.PublicKey()}
	ts.srv = NewServer(ServerConfig{Relay: func(frame []byte, from netip.AddrPort) {
		ts.srv.WriteRelay(from, append([]byte("echo:"), frame...))
	}})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
	require.NoError(t, err)
	hs := &http.Server{Handler: ts.srv, ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); hs.Serve(ln) }()
	ts.addr = ln.Addr().String()

	tr := &quic.Transport{Conn: ts.srv.QUIC()}
	qln, err := tr.Listen(certs.ServerConfig(cert, "tunnel-test", func(addressing.PublicKey) error { return nil }), &quic.Config{})
	require.NoError(t, err)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := qln.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					s, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					io.Copy(s, s)
					s.Close()
				}
			}()
		}
	}()
	t.Cleanup(func() {
		hs.Close()
		ts.srv.Close()
		qln.Close()
		tr.Close()
		wg.Wait()
	})
	return ts
}

func startClient(t *testing.T, cfg ClientConfig) (*Client, chan []byte) {
	t.Helper()
	relayed := make(chan []byte, 16)
	cfg.RelayIn = func(f []byte) { relayed <- append([]byte(nil), f...) }
	c, err := NewClient(cfg)
	require.NoError(t, err)
	c.Start()
	t.Cleanup(func() { c.Close() })
	return c, relayed
}

// quicEcho dials the server's QUIC service through c and echoes msg.
func quicEcho(t *testing.T, c *Client, key addressing.PublicKey, msg []byte) {
	t.Helper()
	id, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	cert, err := certs.Certificate(id.PrivateKey())
	require.NoError(t, err)
	tr := &quic.Transport{Conn: c.QUIC()}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := tr.Dial(ctx, ServerAddr, certs.ClientConfig(cert, "tunnel-test", key, nil), &quic.Config{KeepAlivePeriod: 15 * time.Second, MaxIdleTimeout: 30 * time.Second, MaxIncomingStreams: -1, MaxIncomingUniStreams: -1})
	require.NoError(t, err)
	defer qc.CloseWithError(0, "")
	s, err := qc.OpenStreamSync(ctx)
	require.NoError(t, err)
	werr := make(chan error, 1)
	go func() { // read while writing: the echo's flow control needs it
		_, err := s.Write(msg)
		s.Close()
		werr <- err
	}()
	got, err := io.ReadAll(s)
	require.NoError(t, err)
	require.NoError(t, <-werr)
	require.True(t, bytes.Equal(msg, got), "QUIC echo through the tunnel differs")
}

func TestTunnelCarriesQUICAndRelayFrames(t *testing.T) {
	ts := startTestServer(t)
	c, relayed := startClient(t, ClientConfig{Addr: ts.addr, ServerKey: func() addressing.PublicKey { return ts.key }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.WaitUp(ctx))
	require.True(t, c.WriteRelay([]byte("frame")))
	select {
	case f := <-relayed:
		require.Equal(t, "echo:frame", string(f))
	case <-ctx.Done():
		t.Fatal("no relay frame back")
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: many batched packets
	quicEcho(t, c, ts.key, msg)
	st := ts.srv.Stats()
	require.Equal(t, 1, st.Tunnels)
	require.Positive(t, st.QUICIn)
	require.Equal(t, uint64(1), st.RelayIn)
}

func TestTunnelRefusesAnotherServerKey(t *testing.T) {
	ts := startTestServer(t)
	other, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	c, _ := startClient(t, ClientConfig{Addr: ts.addr, ServerKey: func() addressing.PublicKey { return other.PublicKey() }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.WaitUp(ctx)
	require.ErrorIs(t, err, ErrTLS)
	require.Contains(t, err.Error(), "intercepting TLS")
}

// TestTunnelRedialsAfterReset: a tunnel whose TCP connection is cut comes
// back by itself, and QUIC traffic flows again.
func TestTunnelRedialsAfterReset(t *testing.T) {
	ts := startTestServer(t)
	var mu sync.Mutex
	var conns []net.Conn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	c, _ := startClient(t, ClientConfig{Addr: ts.addr, ServerKey: func() addressing.PublicKey { return ts.key }, DialContext: dial})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.WaitUp(ctx))
	mu.Lock()
	conns[0].(*net.TCPConn).SetLinger(0)
	conns[0].Close() // a reset
	mu.Unlock()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) >= 2 && c.State().Up
	}, 5*time.Second, 5*time.Millisecond, "the tunnel did not come back")
	quicEcho(t, c, ts.key, []byte("after the reset"))
}

// TestTunnelThroughTinyproxy runs a real HTTP proxy (Debian's tinyproxy)
// with Basic authentication on 127.0.0.1: the right password connects,
// a wrong one fails with ErrProxyAuth, and a proxy command that hands out
// the right one after a 407 connects.
func TestTunnelThroughTinyproxy(t *testing.T) {
	proxy := startTinyproxy(t, "agent", "s3cret")
	ts := startTestServer(t)
	key := func() addressing.PublicKey { return ts.key }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	good, _ := startClient(t, ClientConfig{Addr: ts.addr, ServerKey: key,
		Proxy: ProxyConfig{URL: &url.URL{Scheme: "http", Host: proxy, User: url.UserPassword("agent", "s3cret")}}})
	require.NoError(t, good.WaitUp(ctx))
	require.Contains(t, good.State().Via, "proxy http://agent:xxxxx@")
	quicEcho(t, good, ts.key, []byte("through the proxy"))

	bad, _ := startClient(t, ClientConfig{Addr: ts.addr, ServerKey: key,
		Proxy: ProxyConfig{URL: &url.URL{Scheme: "http", Host: proxy, User: url.UserPassword("agent", "wrong")}}})
	require.ErrorIs(t, bad.WaitUp(ctx), ErrProxyAuth)

	// The command prints a wrong password first, the right one after.
	dir := t.TempDir()
	script := filepath.Join(dir, "proxy.sh")
	require.NoError(t, os.WriteFile(script, []byte(fmt.Sprintf(`#!/bin/sh
if [ -e %[1]s/used ]; then echo http://agent:s3cret@%[2]s; else touch %[1]s/used; echo http://agent:expired@%[2]s; fi
`, dir, proxy)), 0o700))
	rot, _ := startClient(t, ClientConfig{Addr: ts.addr, ServerKey: key, Proxy: ProxyConfig{Cmd: script}})
	require.NoError(t, rot.WaitUp(ctx))
	quicEcho(t, rot, ts.key, []byte("rotated"))
}

// startTinyproxy runs tinyproxy on a free 127.0.0.1 port with Basic auth
// and returns its address. Off CI a missing tinyproxy skips the test; on
// CI it fails.
func startTinyproxy(t *testing.T, user, pass string) string {
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("tinyproxy not installed (apt-get install -y tinyproxy): %v", err)
		}
		t.Skipf("tinyproxy not installed: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "tinyproxy.conf")
	lines := []string{
		fmt.Sprintf("Port %d", port), "Listen 127.0.0.1", "Timeout 60", "MaxClients 50",
		"Allow 127.0.0.1", "ConnectPort " + "0", // placeholder, replaced below
		fmt.Sprintf("BasicAuth %s %s", user, pass), "LogLevel Warning",
	}
	// Allow CONNECT to any port (the test server's is random): no
	// ConnectPort lines means every port.
	lines = append(lines[:5], lines[6:]...)
	if os.Geteuid() == 0 {
		lines = append(lines, "User nobody", "Group nogroup")
	}
	require.NoError(t, os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644))
	cmd := exec.Command(bin, "-d", "-c", conf)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "tinyproxy did not start")
	return addr
}
