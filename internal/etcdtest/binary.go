package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binary is an etcd cluster of separate etcd processes, started from the
// etcd binary on PATH as an operator would (Debian's etcd-server package
// installs it; .ci/run does). Stopped with SIGKILL in Cleanup.
type Binary struct {
	t     testing.TB
	bin   string
	mu    sync.Mutex
	procs []*exec.Cmd
	names []string
	args  [][]string
	urls  []string
	logs  []*syncBuf
}

// RequireBinary returns the etcd binary's path, skipping the test if there
// is none (failing it when CI=true: CI installs etcd-server).
func RequireBinary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd binary not found (required when CI=true; apt-get install etcd-server)")
		}
		t.Skip("etcd binary not found (apt-get install etcd-server)")
	}
	return p
}

// StartBinary starts n etcd processes forming one cluster on 127.0.0.1
// ports the test picks, and waits until it serves.
func StartBinary(t testing.TB, n int) *Binary {
	t.Helper()
	bin := RequireBinary(t)
	ports, err := freePorts(2 * n)
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	b := &Binary{t: t, bin: bin}
	var initial []string
	for i := range n {
		name := fmt.Sprintf("e%d", i)
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", name, ports[2*i+1]))
	}
	dir := t.TempDir()
	token := fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())
	for i := range n {
		name := b.nameOf(i)
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		args := []string{
			"--name", name, "--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--heartbeat-interval", "50", "--election-timeout", "500",
		}
		b.names = append(b.names, name)
		b.args = append(b.args, args)
		b.urls = append(b.urls, client)
		b.procs = append(b.procs, nil)
		b.logs = append(b.logs, &syncBuf{})
	}
	for i := range n {
		b.start(i)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := b.client()
	defer cli.Close()
	for {
		if _, err := cli.Put(ctx, "/etcdtest/ready", "1"); err == nil {
			return b
		}
		if ctx.Err() != nil {
			t.Fatalf("etcdtest: etcd binary cluster not ready: %v\n%s", ctx.Err(), b.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *Binary) nameOf(i int) string { return fmt.Sprintf("e%d", i) }

func (b *Binary) start(i int) {
	cmd := exec.Command(b.bin, b.args[i]...)
	cmd.Stdout = b.logs[i]
	cmd.Stderr = b.logs[i]
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("etcdtest: start etcd: %v", err)
	}
	b.mu.Lock()
	b.procs[i] = cmd
	b.mu.Unlock()
}

func (b *Binary) client() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: b.urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.t.Fatalf("etcdtest: client: %v", err)
	}
	return cli
}

// Endpoints returns the members' client URLs.
func (b *Binary) Endpoints() []string { return append([]string(nil), b.urls...) }

// Leader returns the index of the leader member (-1 if none answers).
func (b *Binary) Leader() int {
	cli := b.client()
	defer cli.Close()
	for i, u := range b.urls {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, u)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// Kill kills member i with SIGKILL.
func (b *Binary) Kill(i int) {
	b.mu.Lock()
	cmd := b.procs[i]
	b.procs[i] = nil
	b.mu.Unlock()
	if cmd != nil {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
}

// Restart starts a killed member again on its data.
func (b *Binary) Restart(i int) {
	b.args[i] = replaceArg(b.args[i], "--initial-cluster-state", "existing")
	b.start(i)
}

func replaceArg(args []string, flag, v string) []string {
	out := append([]string(nil), args...)
	for j := range out {
		if out[j] == flag && j+1 < len(out) {
			out[j+1] = v
		}
	}
	return out
}

// Logs returns what the members printed (for failure messages).
func (b *Binary) Logs() string {
	var s strings.Builder
	for i, l := range b.logs {
		fmt.Fprintf(&s, "--- %s\n%s\n", b.names[i], tail(l.String(), 2000))
	}
	return s.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Close kills every member.
func (b *Binary) Close() {
	for i := range b.procs {
		b.Kill(i)
	}
}

// syncBuf is a buffer safe for a writer and a reader at once.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
