package natlab_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/internal/natlab"
)

// reflector is a UDP server on a public host that answers "who <nonce>" with
// "seen <observed source addr:port> <nonce>". Its socket can also send
// unsolicited packets, to probe a NAT's filtering.
type reflector struct {
	conn *net.UDPConn
	addr netip.AddrPort
}

func startReflector(tb testing.TB, h *natlab.Host, port uint16) *reflector {
	tb.Helper()
	c, err := h.ListenUDP(fmt.Sprintf(":%d", port))
	require.NoError(tb, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if nonce, ok := strings.CutPrefix(string(buf[:n]), "who "); ok {
				_, _ = c.WriteToUDPAddrPort([]byte("seen "+from.String()+" "+nonce), from)
			}
		}
	})
	tb.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	return &reflector{conn: c, addr: netip.AddrPortFrom(h.IP(), port)}
}

// poke sends an unsolicited datagram from the reflector's socket.
func (r *reflector) poke(tb testing.TB, to netip.AddrPort, msg string) {
	tb.Helper()
	_, err := r.conn.WriteToUDPAddrPort([]byte(msg), to)
	require.NoError(tb, err)
}

func nonce() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var errNoReply = errors.New("no reply")

// observe asks the reflector at r which source address it sees for c,
// retrying a few times. c must not be read concurrently.
func observe(c *net.UDPConn, r netip.AddrPort, tries int) (netip.AddrPort, error) {
	n := nonce()
	buf := make([]byte, 1500)
	for range tries {
		if _, err := c.WriteToUDPAddrPort([]byte("who "+n), r); err != nil {
			return netip.AddrPort{}, err
		}
		deadline := time.Now().Add(250 * time.Millisecond)
		for {
			_ = c.SetReadDeadline(deadline)
			k, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			rest, ok := strings.CutPrefix(string(buf[:k]), "seen ")
			if !ok {
				continue
			}
			ap, got, ok := strings.Cut(rest, " ")
			if !ok || got != n {
				continue
			}
			_ = c.SetReadDeadline(time.Time{})
			return netip.ParseAddrPort(ap)
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return netip.AddrPort{}, errNoReply
}

// mustObserve is observe that fails the test when there is no answer.
func mustObserve(tb testing.TB, c *net.UDPConn, r *reflector) netip.AddrPort {
	tb.Helper()
	m, err := observe(c, r.addr, 8)
	require.NoError(tb, err, "observe via %v", r.addr)
	return m
}

// received reports whether c receives msg within d.
func received(c *net.UDPConn, msg string, d time.Duration) bool {
	buf := make([]byte, 1500)
	deadline := time.Now().Add(d)
	defer c.SetReadDeadline(time.Time{})
	for {
		_ = c.SetReadDeadline(deadline)
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == msg {
			return true
		}
	}
}

// listen opens a UDP socket on h on an ephemeral port and closes it at the
// end of the test.
func listen(tb testing.TB, h *natlab.Host) *net.UDPConn {
	tb.Helper()
	c, err := h.ListenUDP(":0")
	require.NoError(tb, err)
	tb.Cleanup(func() { c.Close() })
	return c
}

func localAddr(c *net.UDPConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// world is a small lab: two public reflector hosts (r1 on two ports) and one
// site of the given kind with one host.
type world struct {
	lab     *natlab.Lab
	site    *natlab.Site
	host    *natlab.Host
	r1, r1b *reflector // same host, ports 3478 and 3479
	r2      *reflector // another host
	r1host  *natlab.Host
}

func newWorld(tb testing.TB, kind natlab.Kind) *world {
	tb.Helper()
	lab := natlab.New(tb)
	h1 := lab.AddPublicHost("r1")
	h2 := lab.AddPublicHost("r2")
	site := lab.AddSite("site", kind)
	host := site.AddHost("a")
	return &world{
		lab:    lab,
		site:   site,
		host:   host,
		r1:     startReflector(tb, h1, 3478),
		r1b:    startReflector(tb, h1, 3479),
		r2:     startReflector(tb, h2, 3478),
		r1host: h1,
	}
}
