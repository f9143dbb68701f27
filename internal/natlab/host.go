package natlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"sync"
)

// Host is one network namespace of a lab: a public host, a host on a site's
// LAN, or a router. Its methods are safe for concurrent use. Sockets and
// processes it creates live inside its namespace; the lab's teardown kills
// the processes, but sockets belong to the caller, who closes them.
type Host struct {
	lab  *Lab
	name string
	ns   *netns

	mu   sync.Mutex
	ip   netip.Addr
	site *Site  // the site whose LAN the host is on (nil: a public host or a router)
	port string // the host's port on its site's bridge
}

// Name returns the name the host was given (a router has its site's name, a
// carrier router the site's name with "-cgn").
func (h *Host) Name() string { return h.name }

// Namespace returns the name of the host's network namespace, for
// "ip netns exec".
func (h *Host) Namespace() string { return h.ns.name }

// IP returns the host's address: its LAN address for a host in a site
// (public for KindNone), its WAN address for a router.
func (h *Host) IP() netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ip
}

// ListenUDP opens an IPv4 UDP socket inside the host's namespace, for
// example ListenUDP(":0") or ListenUDP("0.0.0.0:3478"). The returned
// connection is an ordinary *net.UDPConn usable from any goroutine.
func (h *Host) ListenUDP(laddr string) (*net.UDPConn, error) {
	var c net.PacketConn
	err := h.ns.do(func() error {
		var err error
		c, err = net.ListenPacket("udp4", laddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natlab: listen udp %s on %s: %w", laddr, h.name, err)
	}
	return c.(*net.UDPConn), nil
}

// ListenTCP opens an IPv4 TCP listener inside the host's namespace.
func (h *Host) ListenTCP(laddr string) (*net.TCPListener, error) {
	var ln net.Listener
	err := h.ns.do(func() error {
		var err error
		ln, err = net.Listen("tcp4", laddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natlab: listen tcp %s on %s: %w", laddr, h.name, err)
	}
	return ln.(*net.TCPListener), nil
}

// DialContext dials from inside the host's namespace, like
// net.Dialer.DialContext; address must be an IP literal and port.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.ns.do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natlab: dial %s %s from %s: %w", network, address, h.name, err)
	}
	return c, nil
}

// Command returns a command that runs name inside the host's namespace
// (through "ip netns exec", which also mounts the namespace's /sys). The
// lab's teardown kills it if it still runs.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := h.command(ctx, name, args...)
	h.lab.track(cmd)
	return cmd
}

func (h *Host) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns.name, name}, args...)...)
}

// Run runs a command inside the host's namespace and returns its combined
// standard output and standard error.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := h.command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("natlab: %s on %s: %w", name, h.name, err)
	}
	return out, nil
}
