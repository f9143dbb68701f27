package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// StartHTTPProxy runs a real HTTP proxy (Debian's tinyproxy) inside the
// host's namespace on port, requiring Basic authentication with user and
// pass, and returns its address. It is stopped in tb's cleanup. tinyproxy
// must be installed (.ci/run installs it); without it the test fails.
func (h *Host) StartHTTPProxy(tb testing.TB, port uint16, user, pass string) netip.AddrPort {
	tb.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		tb.Fatalf("natlab: tinyproxy is needed (apt-get install -y tinyproxy): %v", err)
	}
	dir := tb.TempDir()
	conf := filepath.Join(dir, "tinyproxy.conf")
	lines := []string{
		fmt.Sprintf("Port %d", port), "Listen " + h.IP().String(), "Timeout 120", "MaxClients 100",
		fmt.Sprintf("BasicAuth %s %s", user, pass), "LogLevel Warning",
		// No Allow and no ConnectPort lines: every client, CONNECT to any port.
	}
	if os.Geteuid() == 0 {
		lines = append(lines, "User nobody", "Group nogroup")
	}
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := h.Command(context.Background(), bin, "-d", "-c", conf)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("natlab: start tinyproxy on %s: %v", h.name, err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ap := netip.AddrPortFrom(h.IP(), port)
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := h.DialContext(ctx, "tcp", ap.String())
		cancel()
		if err == nil {
			c.Close()
			return ap
		}
		if time.Now().After(deadline) {
			tb.Fatalf("natlab: tinyproxy on %s did not start: %v", ap, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
