package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
)

// ChildProfileEnv, if set in the runner's environment, makes every child
// write a CPU profile to its value followed by "." and the role.
const ChildProfileEnv = "AGENTNET_BENCH_CHILD_CPUPROFILE"

// ChildEnv is the environment variable that makes this program a child
// process of the runner: its value is the role. A main (and TestMain) calls
// RunChildIfRequested first thing.
const ChildEnv = "AGENTNET_BENCH_CHILD"

// Child roles.
const (
	roleRefuseQUIC     = "refuse-quic-go"
	roleRefuseTLS      = "refuse-tls-tcp"
	roleRefuseAgentnet = "refuse-agentnet"
	roleRendezvous     = "rendezvous"
)

// RunChildIfRequested runs the child role named by ChildEnv and exits, or
// returns at once when ChildEnv is not set.
//
// A child serves on 127.0.0.1, prints "ready <field>..." on stdout, then
// answers "stats" and "stats-gc" lines on stdin with one "stats key=value..."
// line (its CPU time, RSS and heap; stats-gc collects garbage and returns
// freed memory to the OS first), and exits when stdin closes.
func RunChildIfRequested() {
	role := os.Getenv(ChildEnv)
	if role == "" {
		return
	}
	if err := runChild(role, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "bench child %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// childServer is what a role runs.
type childServer struct {
	ready []string                // fields of the ready line
	stats func() map[string]int64 // extra stats; may be nil
	close func()
}

func runChild(role string, in io.Reader, out io.Writer) error {
	var (
		s   childServer
		err error
	)
	switch role {
	case roleRefuseQUIC:
		s, err = quicRefuser()
	case roleRefuseTLS:
		s, err = tlsRefuser()
	case roleRefuseAgentnet:
		s, err = agentnetRefuser()
	case roleRendezvous:
		s, err = rendezvousChild()
	case roleRelayRendezvous: // relay.go
		s, err = relayRendezvousChild()
	default:
		if spec, ok := strings.CutPrefix(role, roleRendezvousStore); ok { // cluster.go
			s, err = storeChild(spec)
			break
		}
		err = fmt.Errorf("unknown role %q", role)
	}
	if errors.Is(err, ErrNotSupported) {
		fmt.Fprintf(out, "n/a %s\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	defer s.close()
	if path := os.Getenv(ChildProfileEnv); path != "" {
		f, err := os.Create(path + "." + role)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Fprintf(out, "ready %s\n", strings.Join(s.ready, " "))
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		switch sc.Text() {
		case "stats", "stats-gc":
			if sc.Text() == "stats-gc" {
				runtime.GC()
				debug.FreeOSMemory()
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(out, "stats cpu_ns=%d rss=%d heap=%d goroutines=%d", processCPU().Nanoseconds(), readRSS(), ms.HeapAlloc, runtime.NumGoroutine())
			if s.stats != nil {
				for k, v := range s.stats() {
					fmt.Fprintf(out, " %s=%d", k, v)
				}
			}
			fmt.Fprintln(out)
		}
	}
	return nil
}

// readRSS returns this process's resident set size in bytes (VmRSS), or 0.
func readRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// quicRefuser is a raw quic-go listener whose VerifyConnection refuses every
// client.
func quicRefuser() (childServer, error) {
	id, err := newIdentity()
	if err != nil {
		return childServer{}, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return childServer{}, err
	}
	tr := &quic.Transport{Conn: udp}
	var set keySet // empty: nobody is trusted
	ln, err := tr.Listen(serverTLS(id.cert, benchALPN, set.allow), QUICConfig())
	if err != nil {
		udp.Close()
		return childServer{}, err
	}
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			c.CloseWithError(1, "admitted by mistake")
		}
	}()
	return childServer{
		ready: []string{udp.LocalAddr().String(), benchALPN},
		close: func() { ln.Close(); tr.Close(); udp.Close() },
	}, nil
}

// tlsRefuser is a TLS 1.3 over TCP listener whose VerifyConnection refuses
// every client.
func tlsRefuser() (childServer, error) {
	id, err := newIdentity()
	if err != nil {
		return childServer{}, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return childServer{}, err
	}
	var set keySet
	conf := serverTLS(id.cert, benchALPN, set.allow)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, conf)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				tc.Handshake()
			}()
		}
	}()
	return childServer{
		ready: []string{ln.Addr().String(), benchALPN},
		close: func() { ln.Close() },
	}, nil
}

// child is a running child process.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	ready []string
}

// startChild starts this executable in role and waits for its ready line.
func startChild(ctx context.Context, role string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ChildEnv+"="+role)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start child %s: %w", role, err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	line, err := c.readLine(ctx)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("bench: child %s: %w", role, err)
	}
	if reason, ok := strings.CutPrefix(line, "n/a "); ok {
		c.close()
		return nil, notSupported("%s", reason)
	}
	f := strings.Fields(line)
	if len(f) < 1 || f[0] != "ready" {
		c.close()
		return nil, fmt.Errorf("bench: child %s said %q", role, line)
	}
	c.ready = f[1:]
	return c, nil
}

func (c *child) readLine(ctx context.Context) (string, error) {
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		ch <- result{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		c.cmd.Process.Kill()
		return "", ctx.Err()
	}
}

// stats asks the child for its counters (after a GC if gc is set).
func (c *child) stats(ctx context.Context, gc bool) (map[string]int64, error) {
	cmd := "stats\n"
	if gc {
		cmd = "stats-gc\n"
	}
	if _, err := io.WriteString(c.in, cmd); err != nil {
		return nil, err
	}
	line, err := c.readLine(ctx)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(line)
	if len(f) < 1 || f[0] != "stats" {
		return nil, fmt.Errorf("bench: child said %q", line)
	}
	m := make(map[string]int64)
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		m[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return m, nil
}

// close ends the child (stdin EOF, then a kill after 5 s) and waits for it.
func (c *child) close() error {
	c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		return <-done
	}
}
