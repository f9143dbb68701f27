package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// cliEnv runs the agentnet binary built for the test, with a private
// AGENTNET_HOME, and checks every --json output against the schema that
// "agentnet context --json" prints.
type cliEnv struct {
	t       *testing.T
	bin     string
	home    string
	schemas map[string]map[string]any // command name -> output schema
	errSch  map[string]any
	checked map[string]bool // commands whose --json output was checked
	mu      sync.Mutex
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// buildCLI builds the agentnet binary (once per test run).
func buildCLI(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "agentnet-e2e-"); buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "agentnet")
		goTool := "go" // the one on PATH, as in the README and .ci/run
		out, err := exec.Command(goTool, "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return builtBin
}

func newCLIEnv(t *testing.T) *cliEnv {
	e := &cliEnv{t: t, bin: buildCLI(t), home: t.TempDir(), checked: map[string]bool{}}
	out, errOut, code := e.run("", nil, "context", "--json")
	require.Equal(t, 0, code, "context: %s", errOut)
	var cat struct {
		ErrorSchema map[string]any `json:"error_schema"`
		Commands    []struct {
			Name   string         `json:"name"`
			Output map[string]any `json:"output"`
		} `json:"commands"`
	}
	require.NoError(t, json.Unmarshal(out, &cat))
	e.schemas = map[string]map[string]any{}
	for _, c := range cat.Commands {
		e.schemas[c.Name] = c.Output
	}
	e.errSch = cat.ErrorSchema
	e.validate("context", out)
	return e
}

func (e *cliEnv) env(state string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AGENTNET_") {
			env = append(env, kv)
		}
	}
	env = append(env, "AGENTNET_HOME="+e.home)
	if state != "" {
		env = append(env, "AGENTNET_STATE="+filepath.Join(e.home, state))
	}
	return env
}

// run runs the binary for state (a daemon's state directory name).
func (e *cliEnv) run(state string, stdin io.Reader, args ...string) (stdout, stderr []byte, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = e.env(state)
	cmd.Stdin = stdin
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run %v: %v", args, err)
	}
	return o.Bytes(), er.Bytes(), code
}

// json runs a command with --json, requires success and exactly one JSON
// object matching the command's schema, and decodes it into out.
func (e *cliEnv) json(state, name string, out any, args ...string) {
	e.t.Helper()
	stdout, stderr, code := e.run(state, nil, append(args, "--json")...)
	require.Equal(e.t, 0, code, "%v: stderr: %s stdout: %s", args, stderr, stdout)
	e.validate(name, stdout)
	if out != nil {
		require.NoError(e.t, json.Unmarshal(stdout, out))
	}
}

// fail runs a command with --json and requires it to fail with code.
func (e *cliEnv) fail(state, name string, code ctl.Code, stdin io.Reader, args ...string) *ctl.Error {
	e.t.Helper()
	stdout, stderr, exit := e.run(state, stdin, append(args, "--json")...)
	require.NotEqual(e.t, 0, exit, "%v should fail: %s", args, stdout)
	lines := bytes.Split(bytes.TrimSpace(stdout), []byte("\n"))
	last := lines[len(lines)-1]
	requireSchema(e.t, e.errSch, last)
	var eb ctl.ErrorBody
	require.NoError(e.t, json.Unmarshal(last, &eb))
	require.Equal(e.t, code, eb.Error.Code, "%v: %s", args, eb.Error.Message)
	require.Contains(e.t, string(stderr), string(code), "the code is on stderr too")
	if eb.Error.Hint != "" {
		require.Contains(e.t, string(stderr), "hint: ")
	}
	e.mu.Lock()
	if !e.checked[name] {
		e.checked[name+" (error)"] = true
	}
	e.mu.Unlock()
	return eb.Error
}

// validate checks that b is exactly one JSON object (one per line for
// streaming commands) matching the schema of command name.
func (e *cliEnv) validate(name string, b []byte) {
	e.t.Helper()
	sch, ok := e.schemas[name]
	require.True(e.t, ok, "no schema for %q in the catalogue", name)
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	require.Len(e.t, lines, 1, "%s --json printed %d lines:\n%s", name, len(lines), b)
	requireSchema(e.t, sch, lines[0])
	e.mu.Lock()
	e.checked[name] = true
	e.mu.Unlock()
}

func requireSchema(t *testing.T, sch map[string]any, line []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var v any
	short := line
	if len(short) > 600 {
		short = append(short[:600:600], "..."...)
	}
	require.NoError(t, dec.Decode(&v), "not JSON: %s", short)
	require.NoError(t, checkSchema(sch, v, "$"), "%s", short)
}

// checkSchema validates v against the JSON Schema subset that schemaOf
// produces: type, properties, required, additionalProperties, items, format.
func checkSchema(s map[string]any, v any, path string) error {
	typ, _ := s["type"].(string)
	switch typ {
	case "":
		return nil
	case "null":
		if v != nil {
			return fmt.Errorf("%s: want null", path)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want string, got %T", path, v)
		}
		if s["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				return fmt.Errorf("%s: %v", path, err)
			}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want boolean, got %T", path, v)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want %s, got %T", path, typ, v)
		}
		if _, err := n.Int64(); typ == "integer" && err != nil {
			if _, err := fmt.Sscanf(n.String(), "%d", new(uint64)); err != nil {
				return fmt.Errorf("%s: want integer, got %s", path, n)
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want array, got %T", path, v)
		}
		items, _ := s["items"].(map[string]any)
		for i, x := range a {
			if err := checkSchema(items, x, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case "object":
		o, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want object, got %T", path, v)
		}
		props, _ := s["properties"].(map[string]any)
		req, _ := s["required"].([]any)
		for _, r := range req {
			if _, ok := o[r.(string)]; !ok {
				return fmt.Errorf("%s: missing required %q", path, r)
			}
		}
		for k, x := range o {
			ps, ok := props[k].(map[string]any)
			if !ok {
				switch ap := s["additionalProperties"].(type) {
				case bool:
					if !ap {
						return fmt.Errorf("%s: unexpected property %q", path, k)
					}
					continue
				case map[string]any:
					ps = ap
				default:
					continue
				}
			}
			if err := checkSchema(ps, x, path+"."+k); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: schema type %q unknown to the checker", path, typ)
	}
	return nil
}

// bg is a command running in the background (a daemon or a streaming
// command).
type bg struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan []byte
	errMu  sync.Mutex
	errBuf bytes.Buffer
	done   chan struct{}
}

func (e *cliEnv) start(state string, stdin io.Reader, args ...string) *bg {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = e.env(state)
	cmd.Stdin = stdin
	stdout, err := cmd.StdoutPipe()
	require.NoError(e.t, err)
	b := &bg{t: e.t, cmd: cmd, lines: make(chan []byte, 1024), done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{mu: &b.errMu, w: &b.errBuf}
	require.NoError(e.t, cmd.Start())
	go func() {
		defer close(b.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			b.lines <- append([]byte(nil), sc.Bytes()...)
		}
	}()
	go func() { cmd.Wait(); close(b.done) }()
	e.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-b.done
	})
	return b
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (b *bg) stderr() string {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	return b.errBuf.String()
}

// line returns the next stdout line.
func (b *bg) line() []byte {
	b.t.Helper()
	select {
	case l, ok := <-b.lines:
		require.True(b.t, ok, "stdout ended; stderr: %s", b.stderr())
		return l
	case <-time.After(30 * time.Second):
		b.t.Fatalf("no output in time; stderr: %s", b.stderr())
	}
	return nil
}

// waitStderr waits until stderr contains s.
func (b *bg) waitStderr(s string) {
	b.t.Helper()
	require.Eventually(b.t, func() bool { return strings.Contains(b.stderr(), s) }, 30*time.Second, 10*time.Millisecond, "stderr: %s", b.stderr())
}

// stop interrupts the command and returns its exit code.
func (b *bg) stop(sig os.Signal) int {
	b.t.Helper()
	b.cmd.Process.Signal(sig)
	return b.wait()
}

func (b *bg) wait() int {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(20 * time.Second):
		b.t.Fatalf("%v did not exit; stderr: %s", b.cmd.Args, b.stderr())
	}
	return b.cmd.ProcessState.ExitCode()
}

// up starts a daemon and returns it with its status.
func (e *cliEnv) up(state string, args ...string) (*bg, ctl.Status) {
	e.t.Helper()
	d := e.start(state, nil, append([]string{"up", "--json", "--listen", "127.0.0.1:0"}, args...)...)
	l := d.line()
	e.validate("up", l)
	var st ctl.Status
	require.NoError(e.t, json.Unmarshal(l, &st))
	return d, st
}

func randomFile(t *testing.T, n int) (string, []byte) {
	b := make([]byte, n)
	rand.Read(b)
	p := filepath.Join(t.TempDir(), "data.bin")
	require.NoError(t, os.WriteFile(p, b, 0o600))
	return p, b
}

// TestEndToEnd drives two daemons and a rendezvous through the CLI binary
// only, as the acceptance test describes.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs daemons")
	}
	start := time.Now()
	e := newCLIEnv(t)
	t.Logf("built in %v", time.Since(start).Round(time.Millisecond))
	srv := rendezvoustest.New(t)
	rdv := []string{"--rendezvous", srv.Addr().String(), "--rendezvous-key", srv.PublicKey().String()}

	e.json("", "version", nil, "version")
	e.fail("", "status", ctl.CodeNotRunning, nil, "status", "--socket", filepath.Join(e.home, "nope.sock"))

	da, stA := e.up("a", append(rdv, "--hostname", "alice")...)
	db, stB := e.up("b", append(rdv, "--hostname", "bob", "--max-message", "65536")...)
	require.Equal(t, "alice", stA.Hostname)
	for _, s := range []string{"a", "b"} {
		require.Eventually(t, func() bool {
			var st ctl.Status
			e.json(s, "status", &st, "status")
			return st.Rendezvous.Registered
		}, 15*time.Second, 50*time.Millisecond)
	}
	info, err := os.Stat(stA.Socket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "control socket mode")

	// A second daemon on the same state directory refuses to start.
	_, stderr, code := e.run("a", nil, "up", "--listen", "127.0.0.1:0", "--socket", filepath.Join(e.home, "other.sock"))
	require.NotEqual(t, 0, code)
	require.Contains(t, string(stderr), "in use by another agentnet daemon")

	// Before trust: refused.
	e.fail("a", "ping", ctl.CodeNotTrusted, nil, "ping", "bob", "-c", "1")

	// Trust: request, pending, approve.
	var tr ctl.TrustResult
	e.json("a", "trust request", &tr, "trust", "request", "bob", "--note", "alice here")
	require.Equal(t, "pending-out", tr.State)
	var pend ctl.TrustList
	require.Eventually(t, func() bool {
		e.json("b", "trust pending", &pend, "trust", "pending")
		return len(pend.Records) == 1
	}, 15*time.Second, 50*time.Millisecond)
	require.Equal(t, stA.Addr, pend.Records[0].Addr)
	require.Equal(t, "alice here", pend.Records[0].Note)
	e.json("b", "trust approve", &tr, "trust", "approve", "alice")
	require.Equal(t, "trusted", tr.State)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		e.json("a", "trust list", &l, "trust", "list")
		return len(l.Records) == 1 && l.Records[0].State == "trusted"
	}, 15*time.Second, 50*time.Millisecond)

	var ping ctl.PingResult
	e.json("a", "ping", &ping, "ping", "bob", "-c", "2", "-i", "10ms")
	require.Len(t, ping.RTTs, 2)
	e.json("a", "peers", nil, "peers")
	e.json("a", "bench", nil, "bench", "bob", "--bytes", "1048576", "--pings", "3")

	// send / recv.
	rv := e.start("b", nil, "recv", "5000", "-n", "1", "--json")
	rv.waitStderr("listening")
	var sent ctl.SendResult
	e.json("a", "send", &sent, "send", "bob", "5000", "--data", "hello bob")
	require.Equal(t, 9, sent.Bytes)
	l := rv.line()
	e.validate("recv", l)
	var got ctl.Received
	require.NoError(t, json.Unmarshal(l, &got))
	require.Equal(t, "hello bob", got.Data)
	require.Equal(t, "alice", got.Hostname)
	require.Equal(t, 0, rv.wait())

	// connect: 10 MiB through bob's echo service, byte-exact.
	big := make([]byte, 10<<20)
	rand.Read(big)
	out, stderr, code := e.run("a", bytes.NewReader(big), "connect", "bob", "7")
	require.Equal(t, 0, code, "connect: %s", stderr)
	require.True(t, bytes.Equal(big, out), "connect: got %d bytes back, want %d identical", len(out), len(big))

	// expose + forward: a real HTTP server reached through the overlay.
	hs := startHTTP(t)
	ex := e.start("b", nil, "expose", "80", "--to", hs, "--json")
	l = ex.line()
	e.validate("expose", l)
	fw := e.start("a", nil, "forward", "127.0.0.1:0", "bob:80", "--json")
	l = fw.line()
	e.validate("forward", l)
	var fwd ctl.Forwarded
	require.NoError(t, json.Unmarshal(l, &fwd))
	hc := &http.Client{Timeout: 30 * time.Second}
	resp, err := hc.Get("http://" + fwd.Listen + "/hello")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "hello from bob's http server\n", string(body))
	sum := sha256.Sum256(big)
	resp, err = hc.Post("http://"+fwd.Listen+"/upload", "application/octet-stream", bytes.NewReader(big))
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, fmt.Sprintf("%d %x\n", len(big), sum), string(body))
	require.Equal(t, 0, fw.stop(os.Interrupt))
	require.Equal(t, 0, ex.stop(os.Interrupt))

	// file send: the name tries to escape the inbox.
	fpath, fdata := randomFile(t, 5<<20)
	var del ctl.DeliveryResult
	e.json("a", "file send", &del, "file", "send", "bob", fpath, "--name", "../../x")
	require.Equal(t, "x", del.Name)
	var inbox ctl.InboxList
	e.json("b", "inbox list", &inbox, "inbox")
	require.Len(t, inbox.Items, 1)
	require.Equal(t, filepath.Join(e.home, "b", "inbox", "files", "x"), inbox.Items[0].Path)
	onDisk, err := os.ReadFile(inbox.Items[0].Path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(fdata, onDisk), "file differs")
	require.Equal(t, hex.EncodeToString(sha256Sum(fdata)), inbox.Items[0].SHA256)
	_, err = os.Stat(filepath.Join(e.home, "x"))
	require.True(t, os.IsNotExist(err), "nothing escapes the inbox")
	// The human form shows the progress bar.
	_, stderr, code = e.run("a", nil, "file", "send", "bob", fpath, "--progress")
	require.Equal(t, 0, code, "%s", stderr)
	require.Contains(t, string(stderr), "100%")

	// Messages, and an oversized one (bob allows 64 KiB).
	e.json("a", "message send", &del, "message", "send", "bob", "--data-json", `{"task":"build"}`)
	var entry ctl.InboxEntry
	e.json("b", "inbox show", &entry, "inbox", "show", del.ID)
	require.Equal(t, "json", entry.Item.Kind)
	e.json("b", "inbox rm", nil, "inbox", "rm", del.ID)
	bigPath, _ := randomFile(t, 100<<10)
	e.fail("a", "message send", ctl.CodeTooLarge, nil, "message", "send", "bob", "--data-file", bigPath)

	// Events: bob subscribes to alice's bus; alice publishes on bob's bus.
	sub := e.start("b", nil, "events", "subscribe", "jobs.>", "--from", "alice", "-n", "1", "--json")
	sub.waitStderr("subscribed")
	var pub ctl.PublishResult
	e.json("a", "events publish", &pub, "events", "publish", "jobs.build.done", "--data", "ok")
	require.Equal(t, 1, pub.Delivered)
	l = sub.line()
	e.validate("events subscribe", l)
	var ev ctl.Event
	require.NoError(t, json.Unmarshal(l, &ev))
	require.Equal(t, "jobs.build.done", ev.Topic)
	require.Equal(t, stA.Addr, ev.From)
	require.Equal(t, 0, sub.wait())
	local := e.start("b", nil, "events", "subscribe", "chat.*", "-n", "1", "--json")
	local.waitStderr("subscribed")
	e.json("a", "events publish", &pub, "events", "publish", "chat.hi", "--data", "hey", "--to", "bob")
	require.Equal(t, 1, pub.Delivered)
	require.NoError(t, json.Unmarshal(local.line(), &ev))
	require.Equal(t, "hey", ev.Data)
	require.Equal(t, 0, local.wait())

	// Hostname, networks.
	var hn ctl.HostnameResult
	e.json("b", "hostname set", &hn, "hostname", "set", "bobby")
	require.True(t, hn.Saved)
	e.json("b", "hostname clear", &hn, "hostname", "clear")
	var nw ctl.Network
	e.json("a", "network create", &nw, "network", "create", "team")
	require.True(t, nw.Owned)
	var inv ctl.NetworkInvite
	e.json("a", "network invite", &inv, "network", "invite", "team", "--for", "bob", "--ttl", "1h")
	require.Equal(t, stB.Key, inv.Invitee)
	e.json("b", "network join", &nw, "network", "join", inv.Token)
	require.Equal(t, "team", nw.Name)
	var ms ctl.NetworkMembers
	e.json("b", "network members", &ms, "network", "members", "team")
	require.Len(t, ms.Members, 2)
	var nl ctl.NetworkList
	e.json("b", "network list", &nl, "network", "list")
	require.Len(t, nl.Networks, 1)
	e.json("b", "network leave", &nw, "network", "leave", "team")
	e.fail("b", "network members", ctl.CodeNotFound, nil, "network", "members", "team")
	e.fail("a", "network remove", ctl.CodeNotFound, nil, "network", "remove", "team", "bob")
	e.json("a", "network invite", &inv, "network", "invite", strconv.Itoa(nw.ID))
	require.True(t, inv.Bearer)
	e.json("b", "network join", &nw, "network", "join", inv.Token)
	e.json("a", "network remove", &ms, "network", "remove", "team", "bob")
	require.Len(t, ms.Members, 1)
	e.fail("b", "network join", ctl.CodeInvalidArgument, nil, "network", "join", "anet-invite:AAAA")

	// Revoke: then every command against the peer fails with not_trusted.
	e.json("a", "trust revoke", &tr, "trust", "revoke", "bob")
	require.Equal(t, "revoked", tr.State)
	for _, c := range []struct {
		name string
		args []string
	}{
		{"ping", []string{"ping", "bob", "-c", "1"}},
		{"send", []string{"send", "bob", "5000", "--data", "x"}},
		{"connect", []string{"connect", "bob", "7"}},
		{"forward", []string{"forward", "0", "bob:80"}},
		{"bench", []string{"bench", "bob", "--bytes", "1024"}},
		{"file send", []string{"file", "send", "bob", fpath}},
		{"message send", []string{"message", "send", "bob", "--text", "x"}},
		{"events publish", []string{"events", "publish", "a.b", "--to", "bob"}},
		{"events subscribe", []string{"events", "subscribe", "--from", "bob"}},
	} {
		e.fail("a", c.name, ctl.CodeNotTrusted, strings.NewReader("x"), c.args...)
	}
	// Bob learns of the revocation too.
	require.Eventually(t, func() bool {
		_, _, code := e.run("b", nil, "ping", "alice", "-c", "1", "--timeout", "5s")
		return code != 0
	}, 15*time.Second, 100*time.Millisecond)
	e.fail("b", "ping", ctl.CodeNotTrusted, nil, "ping", "alice", "-c", "1")
	e.fail("b", "connect", ctl.CodeNotTrusted, nil, "connect", "alice", "7")

	// Bob asks again; alice rejects.
	e.json("b", "trust request", &tr, "trust", "request", "alice")
	require.Eventually(t, func() bool {
		e.json("a", "trust pending", &pend, "trust", "pending")
		return len(pend.Records) == 1
	}, 15*time.Second, 50*time.Millisecond)
	e.json("a", "trust reject", &tr, "trust", "reject", "bob")
	require.Equal(t, "rejected", tr.State)
	e.fail("a", "trust approve", ctl.CodeConflict, nil, "trust", "approve", "bob")
	// Forget: the rejected record goes; a trusted one cannot.
	var fr ctl.ForgetResult
	e.json("a", "trust forget", &fr, "trust", "forget", "bob")
	require.Len(t, fr.Forgotten, 1)
	require.Equal(t, "rejected", fr.Forgotten[0].State)
	e.fail("a", "trust forget", ctl.CodeNotFound, nil, "trust", "forget", "bob")

	// The daemonless commands: demo, and a rendezvous of its own.
	e.json("", "demo", nil, "demo", "--pings", "2")
	rs := e.start("", nil, "rendezvous", "--json", "-listen", "127.0.0.1:0", "-data", filepath.Join(e.home, "rdv2"))
	e.validate("rendezvous", rs.line())
	require.Equal(t, 0, rs.stop(os.Interrupt), rs.stderr())

	// Lifecycle: a unit file, and down stops a daemon and waits for it.
	e.json("", "service print-unit", nil, "service", "print-unit")
	dc, _ := e.up("c", rdv...)
	e.json("c", "down", nil, "down")
	require.Equal(t, 0, dc.wait(), dc.stderr())
	e.fail("", "mcp", ctl.CodeInvalidArgument, nil, "mcp", "--approve", "bogus")

	// Every command's --json output was checked against its schema.
	for name := range e.schemas {
		if !e.checked[name] && !e.checked[name+" (error)"] {
			t.Errorf("command %q: --json output not checked", name)
		}
	}

	// Clean shutdown on SIGTERM and SIGINT; the sockets are removed.
	require.Equal(t, 0, da.stop(syscall.SIGTERM), da.stderr())
	require.Equal(t, 0, db.stop(os.Interrupt), db.stderr())
	_, err = os.Stat(stA.Socket)
	require.True(t, os.IsNotExist(err))
	_, err = os.Stat(stB.Socket)
	require.True(t, os.IsNotExist(err))
	t.Logf("end to end in %v", time.Since(start).Round(time.Millisecond))
}

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// startHTTP serves GET /hello and POST /upload (answers the body's length
// and SHA-256) on 127.0.0.1.
func startHTTP(t *testing.T) string {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from bob's http server\n")
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x\n", n, h.Sum(nil))
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestUpDetachZeroConfig starts two daemons with --detach and no rendezvous
// configured: the first starts the local rendezvous, the second uses it.
func TestUpDetachZeroConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs daemons")
	}
	e := newCLIEnv(t)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	local := c.LocalAddr().String()
	c.Close()
	var sts []ctl.Status
	for _, name := range []string{"a", "b"} {
		var st ctl.Status
		e.json(name, "up", &st, "up", "--detach", "--hostname", name+"-host", "--local-rendezvous", local, "--listen", "127.0.0.1:0")
		require.NotZero(t, st.PID)
		t.Cleanup(func() { syscall.Kill(st.PID, syscall.SIGKILL) })
		sts = append(sts, st)
	}
	require.Equal(t, "embedded", sts[0].Rendezvous.Mode)
	require.Equal(t, "local", sts[1].Rendezvous.Mode)
	require.Eventually(t, func() bool {
		var st ctl.Status
		e.json("b", "status", &st, "status")
		return st.Rendezvous.Registered
	}, 15*time.Second, 50*time.Millisecond)
	// They find each other by hostname through the shared rendezvous.
	var tr ctl.TrustResult
	e.json("a", "trust request", &tr, "trust", "request", "b-host")
	require.True(t, tr.Delivered, tr.Warning)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		e.json("b", "trust pending", &l, "trust", "pending")
		return len(l.Records) == 1
	}, 15*time.Second, 50*time.Millisecond)
	for _, st := range sts {
		require.NoError(t, syscall.Kill(st.PID, syscall.SIGTERM))
		require.Eventually(t, func() bool {
			_, err := os.Stat(st.Socket)
			return os.IsNotExist(err) && syscall.Kill(st.PID, 0) != nil
		}, 15*time.Second, 50*time.Millisecond, "daemon %d did not exit", st.PID)
	}
}

// TestConnectBrokenStream runs "agentnet connect" between two daemons (all
// separate processes) and cuts its stream every way issue 9 lists: the
// TCP program behind bob's expose resets mid-transfer, alice's connect is
// killed mid-upload, bob's daemon is killed (SIGKILL) mid-transfer. A cut
// must exit non-zero with a stable code (before the fix connect exited 0
// with the truncated data), and the TCP program must see a reset (before:
// a clean FIN).
func TestConnectBrokenStream(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs daemons")
	}
	e := newCLIEnv(t)
	srv := rendezvoustest.New(t)
	rdv := []string{"--rendezvous", srv.Addr().String(), "--rendezvous-key", srv.PublicKey().String()}
	da, _ := e.up("a", append(rdv, "--hostname", "alice")...)
	db, _ := e.up("b", append(rdv, "--hostname", "bob")...)
	defer da.stop(syscall.SIGTERM)
	for _, s := range []string{"a", "b"} {
		require.Eventually(t, func() bool {
			var st ctl.Status
			e.json(s, "status", &st, "status")
			return st.Rendezvous.Registered
		}, 15*time.Second, 50*time.Millisecond)
	}
	e.json("a", "trust request", nil, "trust", "request", "bob")
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		e.json("b", "trust pending", &l, "trust", "pending")
		return len(l.Records) == 1
	}, 15*time.Second, 50*time.Millisecond)
	e.json("b", "trust approve", nil, "trust", "approve", "alice")
	require.Eventually(t, func() bool {
		_, _, code := e.run("a", nil, "ping", "bob", "-c", "1")
		return code == 0
	}, 15*time.Second, 100*time.Millisecond)

	// The program behind expose: "cut" sends 2 MiB and resets; "sink"
	// reads to the end and reports how the end looked.
	sinkEnded := make(chan error, 4)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c *net.TCPConn) {
				var mode [4]byte
				if _, err := io.ReadFull(c, mode[:]); err != nil {
					c.Close()
					return
				}
				switch string(mode[:]) {
				case "cut!":
					c.Write(make([]byte, 2<<20))
					c.SetLinger(0)
					c.Close()
				case "sink":
					_, err := io.Copy(io.Discard, c)
					sinkEnded <- err
					c.Close()
				}
			}(c.(*net.TCPConn))
		}
	}()
	ex := e.start("b", nil, "expose", "5000", "--to", l.Addr().String(), "--json")
	ex.line()

	// The program resets: connect exits 1, stream_reset, after the data.
	stdout, stderr, code := e.run("a", strings.NewReader("cut!"), "connect", "bob", "5000", "--json")
	require.Equal(t, exitError, code, "stderr: %s", stderr)
	require.Contains(t, string(stderr), "stream_reset")
	require.Greater(t, len(stdout), 0, "the data before the cut arrived")
	require.NotContains(t, string(stdout), "error", "stdout is the stream: no JSON after its data")

	// A clean transfer still exits 0.
	_, stderr, code = e.run("a", strings.NewReader("sink"+strings.Repeat("x", 1<<20)), "connect", "bob", "5000")
	require.Equal(t, 0, code, "stderr: %s", stderr)
	select {
	case err := <-sinkEnded:
		require.NoError(t, err, "a clean end is a clean FIN")
	case <-time.After(20 * time.Second):
		t.Fatal("the sink did not see the end")
	}

	// connect killed mid-upload: the program behind expose sees a reset.
	pr, pw := io.Pipe()
	defer pw.Close()
	cn := e.start("a", pr, "connect", "bob", "5000")
	go func() {
		pw.Write([]byte("sink"))
		buf := make([]byte, 64<<10)
		for {
			if _, err := pw.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, cn.cmd.Process.Kill())
	cn.wait()
	select {
	case err := <-sinkEnded:
		require.True(t, errors.Is(err, syscall.ECONNRESET), "the program must see a reset, got %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the sink did not see the end")
	}

	// Bob's daemon dies (SIGKILL) while alice streams through his echo
	// service: her connect exits 1 once the path is found dead.
	pr2, pw2 := io.Pipe()
	defer pw2.Close()
	go func() {
		buf := make([]byte, 16<<10)
		for {
			if _, err := pw2.Write(buf); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	echo := e.start("a", pr2, "connect", "bob", "7", "--json")
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	require.NoError(t, db.cmd.Process.Kill())
	db.wait()
	require.Equal(t, exitError, echo.wait(), "stderr: %s", echo.stderr())
	t.Logf("connect failed %v after bob's daemon was killed: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(echo.stderr()))
	require.Contains(t, echo.stderr(), "stream_reset")
	require.NotContains(t, echo.stderr(), "shutting down")
}
