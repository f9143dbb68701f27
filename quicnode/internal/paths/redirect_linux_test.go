package paths

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"unsafe"
)

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func readOne(t *testing.T, c *net.UDPConn) (string, bool) {
	t.Helper()
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n, _, err := c.ReadFromUDP(buf)
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}

// TestRedirectedWrites: every write path of the wrapped socket honours a
// redirect, and only the redirected destination.
func TestRedirectedWrites(t *testing.T) {
	var r redirects
	raw := listenLoopback(t)
	c := withRedirects(raw, &r).(*redirUDP)
	old, moved, other := listenLoopback(t), listenLoopback(t), listenLoopback(t)
	oldAP := old.LocalAddr().(*net.UDPAddr).AddrPort()
	l := &Link{}
	require.True(t, r.set(l, oldAP, moved.LocalAddr().(*net.UDPAddr).AddrPort()))
	require.False(t, r.set(l, oldAP, moved.LocalAddr().(*net.UDPAddr).AddrPort()), "the same redirect again changes nothing")

	writes := map[string]func(msg string, to *net.UDPAddr) error{
		"WriteTo":     func(m string, to *net.UDPAddr) error { _, err := c.WriteTo([]byte(m), to); return err },
		"WriteToUDP":  func(m string, to *net.UDPAddr) error { _, err := c.WriteToUDP([]byte(m), to); return err },
		"WriteMsgUDP": func(m string, to *net.UDPAddr) error { _, _, err := c.WriteMsgUDP([]byte(m), nil, to); return err },
		"WriteToUDPAddrPort": func(m string, to *net.UDPAddr) error {
			_, err := c.WriteToUDPAddrPort([]byte(m), to.AddrPort())
			return err
		},
		"WriteMsgUDPAddrPort": func(m string, to *net.UDPAddr) error {
			_, _, err := c.WriteMsgUDPAddrPort([]byte(m), nil, to.AddrPort())
			return err
		},
	}
	for name, write := range writes {
		require.NoError(t, write(name, old.LocalAddr().(*net.UDPAddr)))
		got, ok := readOne(t, moved)
		require.True(t, ok, "%s: the redirected packet did not arrive", name)
		require.Equal(t, name, got)
		_, ok = readOne(t, old)
		require.False(t, ok, "%s: the old address must get nothing", name)
		require.NoError(t, write(name+"-other", other.LocalAddr().(*net.UDPAddr)))
		got, ok = readOne(t, other)
		require.True(t, ok && got == name+"-other", "%s: other destinations are not redirected", name)
	}
	require.Equal(t, moved.LocalAddr().(*net.UDPAddr).AddrPort(), r.target(l, oldAP))
	r.drop(&Link{}, netip.AddrPort{})
	require.NotNil(t, r.lookupAP(oldAP), "another link's drop leaves the redirect")
	r.drop(l, netip.AddrPort{})
	require.Nil(t, r.cur.Load(), "dropping the last redirect clears the map")
	_, err := c.WriteTo([]byte("back"), old.LocalAddr())
	require.NoError(t, err)
	got, ok := readOne(t, old)
	require.True(t, ok && got == "back")
}

// TestWriteSurvivesSourceGone: a write pinned (IP_PKTINFO) to a source
// address the host no longer has, as quic-go pins an accepted connection
// on a socket bound to the unspecified address, goes out from the address
// the kernel picks, once and then from the cache; the other control
// messages stay.
func TestWriteSurvivesSourceGone(t *testing.T) {
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{})
	require.NoError(t, err)
	t.Cleanup(func() { raw.Close() })
	var r redirects
	c := withRedirects(raw, &r).(*redirUDP)
	dst := listenLoopback(t)
	to := dst.LocalAddr().(*net.UDPAddr)

	gone := (&ipv4.ControlMessage{Src: net.IPv4(10, 99, 99, 99)}).Marshal()
	_, _, err = raw.WriteMsgUDP([]byte("x"), gone, to)
	require.Error(t, err, "the kernel refuses a source the host does not have")
	require.True(t, sourceGone(err), "%v", err)

	for i, msg := range []string{"first", "cached"} {
		_, _, err := c.WriteMsgUDP([]byte(msg), gone, to)
		require.NoError(t, err, "write %d", i)
		got, ok := readOne(t, dst)
		require.True(t, ok && got == msg, "write %d: got %q", i, got)
		require.True(t, c.gone.any())
	}
	// A pin whose interface was deleted (the host's LAN link went away
	// with the network it moved off: what TestNATMigration/roam-acceptor
	// hit, "sendmsg: no such device") goes out unpinned too.
	noDev := (&ipv4.ControlMessage{IfIndex: 1 << 30, Src: net.IPv4(127, 0, 0, 1)}).Marshal()
	_, _, err = raw.WriteMsgUDP([]byte("x"), noDev, to)
	require.ErrorIs(t, err, syscall.ENODEV, "the kernel refuses an interface the host does not have")
	_, _, err = c.WriteMsgUDP([]byte("nodev"), noDev, to)
	require.NoError(t, err)
	got, ok := readOne(t, dst)
	require.True(t, ok && got == "nodev", "got %q", got)
	require.True(t, c.gone.has(noDev[:leadingPktinfo(noDev)]))
	// A source the host has is left alone.
	here := (&ipv4.ControlMessage{Src: net.IPv4(127, 0, 0, 1)}).Marshal()
	_, _, err = c.WriteMsgUDP([]byte("here"), here, to)
	require.NoError(t, err)
	got, ok = readOne(t, dst)
	require.True(t, ok && got == "here")
	require.False(t, c.gone.has(here[:leadingPktinfo(here)]))
}

func TestLeadingPktinfo(t *testing.T) {
	pk := (&ipv4.ControlMessage{Src: net.IPv4(10, 0, 0, 1)}).Marshal()
	seg := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&seg[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	both := append(append([]byte(nil), pk...), seg...)
	require.Equal(t, len(pk), leadingPktinfo(both))
	require.Equal(t, seg, both[leadingPktinfo(both):], "what follows the pktinfo stays intact")
	require.Zero(t, leadingPktinfo(seg), "not a pktinfo")
	require.Zero(t, leadingPktinfo(nil))
	require.Zero(t, leadingPktinfo(pk[:10]), "truncated")
	bad := append([]byte(nil), pk...)
	bad[0] = 0xff // a length beyond the buffer
	require.Zero(t, leadingPktinfo(bad))
}

// bufferless is a PacketConn with no buffer sizing.
type bufferless struct{ net.PacketConn }

// TestRedirectKeepsBufferSizing: a main socket that is not a *net.UDPConn
// (a firewall shim, a test network) keeps the buffer sizing quic-go asks
// for through the redirect wrapper, and one that cannot size says so.
func TestRedirectKeepsBufferSizing(t *testing.T) {
	type sizer interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	var r redirects
	raw := listenLoopback(t)
	rcvbuf := func() int {
		fd, err := raw.SyscallConn()
		require.NoError(t, err)
		var n int
		require.NoError(t, fd.Control(func(f uintptr) { n, _ = unix.GetsockoptInt(int(f), unix.SOL_SOCKET, unix.SO_RCVBUF) }))
		return n
	}
	require.NoError(t, raw.SetReadBuffer(8<<10))
	small := rcvbuf()
	s, ok := withRedirects(sizerPacketConn{raw}, &r).(sizer)
	require.True(t, ok, "the wrapper has the sizing methods")
	// 64 KiB: under the default net.core.rmem_max, so this holds off root.
	require.NoError(t, s.SetReadBuffer(64<<10))
	require.NoError(t, s.SetWriteBuffer(64<<10))
	require.Greater(t, rcvbuf(), small, "the socket's receive buffer was sized through the wrapper")

	none := withRedirects(bufferless{raw}, &r).(sizer)
	require.ErrorIs(t, none.SetReadBuffer(1<<20), errors.ErrUnsupported)
	require.ErrorIs(t, none.SetWriteBuffer(1<<20), errors.ErrUnsupported)
}

// sizerPacketConn is a PacketConn that is not a *net.UDPConn but sizes its
// socket's buffers, as the bench's firewall shim does.
type sizerPacketConn struct{ c *net.UDPConn }

func (s sizerPacketConn) ReadFrom(b []byte) (int, net.Addr, error)  { return s.c.ReadFrom(b) }
func (s sizerPacketConn) WriteTo(b []byte, a net.Addr) (int, error) { return s.c.WriteTo(b, a) }
func (s sizerPacketConn) Close() error                              { return s.c.Close() }
func (s sizerPacketConn) LocalAddr() net.Addr                       { return s.c.LocalAddr() }
func (s sizerPacketConn) SetDeadline(t time.Time) error             { return s.c.SetDeadline(t) }
func (s sizerPacketConn) SetReadDeadline(t time.Time) error         { return s.c.SetReadDeadline(t) }
func (s sizerPacketConn) SetWriteDeadline(t time.Time) error        { return s.c.SetWriteDeadline(t) }
func (s sizerPacketConn) SetReadBuffer(n int) error                 { return s.c.SetReadBuffer(n) }
func (s sizerPacketConn) SetWriteBuffer(n int) error                { return s.c.SetWriteBuffer(n) }

// failingConn fails every write with err.
type failingConn struct {
	net.PacketConn
	err error
}

func (c failingConn) WriteTo([]byte, net.Addr) (int, error) { return 0, c.err }

// TestUnroutableWriteIsALoss: a write the host has no route or source
// address for (a laptop between two networks) is a lost datagram, counted,
// not the error that makes quic-go close the connection; other errors
// still are errors.
func TestUnroutableWriteIsALoss(t *testing.T) {
	raw := listenLoopback(t)
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	for _, errno := range []syscall.Errno{syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EADDRNOTAVAIL, syscall.ENODEV} {
		var r redirects
		c := withRedirects(failingConn{raw, &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmsg", errno)}}, &r)
		n, err := c.WriteTo([]byte("lost"), to)
		require.NoError(t, err, "%v", errno)
		require.Equal(t, 4, n)
		require.Equal(t, uint64(1), r.unroutable.Load())
	}
	var r redirects
	c := withRedirects(failingConn{raw, net.ErrClosed}, &r)
	_, err := c.WriteTo([]byte("x"), to)
	require.ErrorIs(t, err, net.ErrClosed, "a closed socket is still an error")
	c = withRedirects(failingConn{raw, os.NewSyscallError("sendmsg", syscall.EMSGSIZE)}, &r)
	_, err = c.WriteTo([]byte("x"), to)
	require.ErrorIs(t, err, syscall.EMSGSIZE, "quic-go's path MTU discovery needs EMSGSIZE")
	require.Zero(t, r.unroutable.Load())
}
