package natlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named network namespaces (bind mounts).
const netnsDir = "/run/netns"

// netns is a handle on one named network namespace.
type netns struct {
	name string // name under /run/netns
	fd   int    // open handle, closed by close
	ino  uint64 // inode of the namespace, to find processes inside it
}

func openNetns(name string) (*netns, error) {
	fd, err := unix.Open(filepath.Join(netnsDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("natlab: open namespace %s: %w", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("natlab: stat namespace %s: %w", name, err)
	}
	return &netns{name: name, fd: fd, ino: st.Ino}, nil
}

// do runs fn on an OS thread that has joined the namespace. Sockets created
// and processes started by fn belong to the namespace; both outlive fn and
// may be used from any goroutine afterwards.
//
// The thread is returned to the Go scheduler only if it could be moved back
// to its original namespace; otherwise it stays locked and the runtime
// terminates it when the helper goroutine exits.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("natlab: open current namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("natlab: enter namespace %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("natlab: leave namespace %s: %w", n.name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// exec runs a command inside the namespace (forked from a thread that has
// joined it) and returns its standard output. stdin may be empty.
func (n *netns) exec(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := n.do(cmd.Run)
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if stdin != "" {
			msg += "\ninput:\n" + stdin
		}
		return stdout.Bytes(), fmt.Errorf("natlab: %s %s in %s: %w: %s", name, strings.Join(args, " "), n.name, err, msg)
	}
	return stdout.Bytes(), nil
}

// sysctl writes settings of the namespace, keys in dotted sysctl form. /proc/sys/net
// resolves against the network namespace of the calling thread, so writing from a
// thread that joined the namespace sets the namespace's own values.
// Keys whose file does not exist are skipped when optional is true.
func (n *netns) sysctl(kv [][2]string, optional bool) error {
	return n.do(func() error {
		for _, e := range kv {
			if err := writeSysctl(e[0], e[1]); err != nil {
				if optional && errors.Is(err, os.ErrNotExist) {
					continue
				}
				return fmt.Errorf("natlab: sysctl %s=%s in %s: %w", e[0], e[1], n.name, err)
			}
		}
		return nil
	})
}

func writeSysctl(key, value string) error {
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return os.WriteFile(p, []byte(value), 0o644)
}

// baseSysctls are the per-namespace settings every lab namespace gets: a quiet
// IPv4-only stack with no reverse-path filtering, no redirects and no bridge
// netfilter (bridged LAN traffic must not be conntracked by the router).
func (n *netns) baseSysctls(forward bool) error {
	fwd := "0"
	if forward {
		fwd = "1"
	}
	kv := [][2]string{
		{"net.ipv4.ip_forward", fwd},
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	}
	// Every interface of the namespace already exists when this runs, so set
	// the per-interface files too (the effective rp_filter is the maximum of
	// "all" and the interface's own value).
	var ifaces []string
	err := n.do(func() error {
		ents, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		for _, e := range ents {
			ifaces = append(ifaces, e.Name())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("natlab: list interfaces of %s: %w", n.name, err)
	}
	for _, ifc := range ifaces {
		kv = append(kv,
			[2]string{"net.ipv4.conf." + ifc + ".rp_filter", "0"},
			[2]string{"net.ipv4.conf." + ifc + ".accept_redirects", "0"},
			[2]string{"net.ipv4.conf." + ifc + ".send_redirects", "0"},
		)
	}
	if err := n.sysctl(kv, false); err != nil {
		return err
	}
	// Present only when the kernel has br_netfilter.
	return n.sysctl([][2]string{
		{"net.bridge.bridge-nf-call-iptables", "0"},
		{"net.bridge.bridge-nf-call-arptables", "0"},
		{"net.bridge.bridge-nf-call-ip6tables", "0"},
	}, true)
}

func (n *netns) close() {
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
}

// runIP runs one iproute2 batch, in namespace ns ("" for the current one).
func runIP(ctx context.Context, ns string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := []string{"-b", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	script := strings.Join(lines, "\n") + "\n"
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("natlab: ip %s: %w: %s\nbatch:\n%s", strings.Join(args, " "), err, bytes.TrimSpace(out), script)
	}
	return nil
}

// deleteNetns removes the name of a namespace (as ip netns del does). The
// namespace itself disappears once nothing uses it any more.
func deleteNetns(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("natlab: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("natlab: remove %s: %w", p, err)
	}
	return nil
}

// pidsIn returns the processes (other than this one) whose network namespace
// is one of inos.
func pidsIn(inos map[uint64]bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		link, err := os.Readlink("/proc/" + e.Name() + "/ns/net")
		if err != nil {
			continue
		}
		// "net:[4026532281]"
		s := strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]")
		ino, err := strconv.ParseUint(s, 10, 64)
		if err == nil && inos[ino] {
			pids = append(pids, pid)
		}
	}
	return pids
}
