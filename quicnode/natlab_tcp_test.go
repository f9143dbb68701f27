package quicnode

import (
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/internal/natlab"
	"github.com/agentnet/agentnet/internal/tunnel"
	"github.com/stretchr/testify/require"
)

// TestNATTCP: agents whose network lets no UDP out (or only TCP to an
// authenticating HTTP proxy) reach and are reached by their peers over the
// TCP path, in the NAT lab with the kernel's NAT and a real tinyproxy.
func TestNATTCP(t *testing.T) {
	ln := newLabNet(t)
	tcpOn := func(c *Config) { c.RendezvousTCP = ln.rdvTCPAddr() }
	var mu sync.Mutex
	var table []string
	report := func(format string, args ...any) {
		mu.Lock()
		table = append(table, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	t.Cleanup(func() { t.Logf("TCP path in the lab:\n%s", strings.Join(table, "\n")) })

	// startBlocked starts an agent behind a site that drops all UDP and
	// returns it with how long it took to register.
	startBlocked := func(t *testing.T, s *natlab.Site, mod func(*Config)) (*Node, time.Duration) {
		h := s.AddHost(s.Name() + "h")
		start := time.Now()
		n := ln.startLabNodeWith(t, h, "", mod, true)
		return n, time.Since(start)
	}
	both := func(t *testing.T, name string, a, b *Node, size int64) {
		for _, d := range []struct{ from, to *Node }{{a, b}, {b, a}} {
			t0 := time.Now()
			ttfb, path := transfer(t, d.from, d.to, 9000, size)
			require.Equal(t, "relay", path)
			report("%-22s %s→%s: first echoed byte %v, %d MiB byte-exact in %v", name, d.from.Addr(), d.to.Addr(), ttfb.Round(time.Millisecond), size>>20, time.Since(t0).Round(time.Millisecond))
		}
		datagramRoundTrip(t, a, b)
		datagramRoundTrip(t, b, a)
	}

	t.Run("udp-blocked/home", func(t *testing.T) {
		sa := ln.lab.AddSite("tb1a", natlab.KindHome)
		require.NoError(t, sa.BlockAllUDP())
		a, reg := startBlocked(t, sa, tcpOn)
		require.Equal(t, "tcp", a.Reach().Transport)
		b := ln.startLabNode(ln.lab.AddSite("tb1b", natlab.KindHome).AddHost("tb1bh"), "")
		trustNodes(t, a, b)
		ttfb, path := transfer(t, b, a, 9000, 1<<20)
		require.Equal(t, "relay", path)
		require.Equal(t, "tcp", a.Peers()[0].Transport)
		report("%-22s registered over TCP after %v; first echoed byte from the UDP peer's Dial %v (total %v)", "udp-blocked/home", reg.Round(time.Millisecond), ttfb.Round(time.Millisecond), (reg + ttfb).Round(time.Millisecond))
		both(t, "udp-blocked/home", a, b, 64<<20)

		// Revocation cuts the tunnelled connection at once.
		c, err := b.Dial(ctxT(t, 5*time.Second), a.Addr().String(), PortEcho)
		require.NoError(t, err)
		readErr := make(chan error, 1)
		go func() { _, err := io.ReadAll(c); readErr <- err }()
		t0 := time.Now()
		require.NoError(t, a.RevokeTrust(ctxT(t, 5*time.Second), b.Addr().String()))
		select {
		case err := <-readErr:
			require.ErrorIs(t, err, ErrNotTrusted)
			report("%-22s revocation cut the peer's stream after %v", "udp-blocked/home", time.Since(t0).Round(time.Microsecond))
		case <-time.After(3 * time.Second):
			t.Fatal("revocation did not cut the tunnelled stream")
		}
	})

	t.Run("both-udp-blocked", func(t *testing.T) {
		sa := ln.lab.AddSite("tb2a", natlab.KindHome)
		sb := ln.lab.AddSite("tb2b", natlab.KindSymmetric)
		require.NoError(t, sa.BlockAllUDP())
		require.NoError(t, sb.BlockAllUDP())
		a, _ := startBlocked(t, sa, tcpOn)
		b, _ := startBlocked(t, sb, tcpOn)
		trustNodes(t, a, b)
		both(t, "both-udp-blocked", a, b, 64<<20)
		require.Positive(t, ln.srv.TunnelStats().RelayIn)
	})

	t.Run("proxy-only", func(t *testing.T) {
		proxyHost := ln.lab.AddPublicHost("proxy")
		proxy := proxyHost.StartHTTPProxy(t, 3128, "agent", "s3cret")
		sa := ln.lab.AddSite("tb3a", natlab.KindHome)
		require.NoError(t, sa.AllowOnlyTCPTo(proxy))
		withProxy := func(u *url.URL, cmd string) func(*Config) {
			return func(c *Config) {
				tcpOn(c)
				c.Proxy = tunnel.ProxyConfig{URL: u, Cmd: cmd}
			}
		}
		good := &url.URL{Scheme: "http", Host: proxy.String(), User: url.UserPassword("agent", "s3cret")}
		a, reg := startBlocked(t, sa, withProxy(good, ""))
		r := a.Reach()
		require.Equal(t, "tcp", r.Transport)
		require.Contains(t, r.TunnelVia, "proxy http://agent:xxxxx@")
		b := ln.startLabNode(ln.lab.AddSite("tb3b", natlab.KindHome).AddHost("tb3bh"), "")
		trustNodes(t, a, b)
		report("%-22s registered through tinyproxy after %v", "proxy-only", reg.Round(time.Millisecond))
		both(t, "proxy-only", a, b, 64<<20)

		// A wrong password: a clear error, no registration.
		bad := &url.URL{Scheme: "http", Host: proxy.String(), User: url.UserPassword("agent", "wrong")}
		w := ln.startLabNodeWith(t, sa.AddHost("tb3aw"), "", withProxy(bad, ""), false)
		require.Eventually(t, func() bool { return w.Reach().Err != nil }, 10*time.Second, 20*time.Millisecond)
		msg := w.Reach().Err.Error()
		require.Contains(t, msg, "proxy authentication required or refused")
		require.NotContains(t, msg, "wrong", "the password never appears in errors")
		report("%-22s wrong proxy password: %s", "proxy-only", msg)

		// A proxy command that hands out the right password after a refusal.
		dir := t.TempDir()
		script := filepath.Join(dir, "proxy.sh")
		require.NoError(t, os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nif [ -e %[1]s/used ]; then echo http://agent:s3cret@%[2]s; else touch %[1]s/used; echo http://agent:expired@%[2]s; fi\n", dir, proxy)), 0o700))
		rot := ln.startLabNodeWith(t, sa.AddHost("tb3ar"), "", withProxy(nil, script), true)
		require.Equal(t, "tcp", rot.Reach().Transport)
		_, err := os.Stat(filepath.Join(dir, "used"))
		require.NoError(t, err, "the command ran twice: the first password was refused")
	})

	t.Run("udp-unblocked-mid-transfer", func(t *testing.T) {
		sa := ln.lab.AddSite("tb4a", natlab.KindHome)
		require.NoError(t, sa.BlockAllUDP())
		require.NoError(t, sa.SetRate(40_000_000))
		a, _ := startBlocked(t, sa, tcpOn)
		b := ln.startLabNode(ln.lab.AddSite("tb4b", natlab.KindHome).AddHost("tb4bh"), "")
		trustNodes(t, a, b)
		done := make(chan error, 1)
		go func() {
			_, path, err := tryTransfer(a, b, 9000, 64<<20)
			if err == nil && path != "relay" {
				err = fmt.Errorf("transfer started on %s", path)
			}
			done <- err
		}()
		time.Sleep(3 * time.Second)
		unblocked := time.Now()
		require.NoError(t, sa.Unblock())
		require.Eventually(t, func() bool { return a.Reach().Transport == "udp" }, 30*time.Second, 50*time.Millisecond)
		toUDP := time.Since(unblocked)
		require.Eventually(t, func() bool { return pathTo(a, b) == "direct" }, 30*time.Second, 50*time.Millisecond, "never direct after UDP came back")
		toDirect := time.Since(unblocked)
		require.NoError(t, <-done, "the transfer running across the move")
		report("%-22s UDP back: on UDP after %v, direct after %v; 64 MiB at 40 Mbit/s across the move byte-exact", "udp-unblocked", toUDP.Round(time.Millisecond), toDirect.Round(time.Millisecond))
		_, path := transfer(t, a, b, 9001, 1<<20)
		require.Equal(t, "direct", path)
	})

	t.Run("tcp-reset-mid-transfer", func(t *testing.T) {
		sa := ln.lab.AddSite("tb5a", natlab.KindHome)
		require.NoError(t, sa.BlockAllUDP())
		require.NoError(t, sa.SetRate(40_000_000))
		a, _ := startBlocked(t, sa, tcpOn)
		b := ln.startLabNode(ln.lab.AddSite("tb5b", natlab.KindHome).AddHost("tb5bh"), "")
		trustNodes(t, a, b)
		done := make(chan error, 1)
		go func() {
			_, _, err := tryTransfer(b, a, 9000, 32<<20)
			done <- err
		}()
		time.Sleep(2 * time.Second)
		rdvTCP := netip.MustParseAddrPort(ln.rdvTCPAddr())
		require.NoError(t, sa.ResetTCPTo(rdvTCP))
		require.Eventually(t, func() bool { return !a.Reach().TunnelUp }, 10*time.Second, 10*time.Millisecond, "the reset did not cut the tunnel")
		time.Sleep(500 * time.Millisecond)
		require.NoError(t, sa.Unreset())
		lifted := time.Now()
		require.Eventually(t, func() bool { return a.Reach().TunnelUp }, 5*time.Second, 10*time.Millisecond, "the tunnel did not come back within 5 s")
		back := time.Since(lifted)
		err := <-done
		require.NoError(t, err, "the transfer across the reset")
		report("%-22s tunnel reset for 0.5 s mid-transfer: back %v after the reset lifted; 32 MiB byte-exact", "tcp-reset", back.Round(time.Millisecond))
	})
}
