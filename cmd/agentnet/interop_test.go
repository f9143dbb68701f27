package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/mcpserver"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// Virtual ports bob serves in TestInterop.
const (
	interopMCPPort  = 80
	interopA2APort  = 81
	interopHTTPPort = 8080
)

// trustPair makes the daemons of states x and y trust each other through
// the CLI (x asks y by hostname yName; y approves x by xName).
func trustPair(t *testing.T, e *cliEnv, x, yName, y, xName string) {
	t.Helper()
	e.json(x, "trust request", nil, "trust", "request", yName)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		e.json(y, "trust pending", &l, "trust", "pending")
		return len(l.Records) == 1
	}, 15*time.Second, 20*time.Millisecond)
	e.json(y, "trust approve", nil, "trust", "approve", xName)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		e.json(x, "trust list", &l, "trust", "list")
		return len(l.Records) == 1 && l.Records[0].State == "trusted"
	}, 15*time.Second, 20*time.Millisecond)
}

// startBobTools serves an MCP server (official Go SDK, streamable HTTP) with
// one tool, add, on 127.0.0.1; it returns host:port.
func startBobTools(t *testing.T) string {
	type addIn struct {
		A int `json:"a"`
		B int `json:"b"`
	}
	type addOut struct {
		Sum int `json:"sum"`
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "bob-tools", Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "add", Description: "add two integers"}, func(ctx context.Context, req *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
		return nil, addOut{Sum: in.A + in.B}, nil
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: mux}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return l.Addr().String()
}

// nodeDir is the TypeScript test directory; its node_modules come from
// "npm ci" (.ci/run runs it; off CI the test runs it when they are missing).
func nodeDir(t *testing.T) string {
	t.Helper()
	needTool(t, "node")
	dir, err := filepath.Abs("../../interop/node")
	require.NoError(t, err)
	for _, m := range []string{"@modelcontextprotocol/sdk", "@a2a-js/sdk", "express"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", m, "package.json")); err != nil {
			npm := needTool(t, "npm")
			t.Logf("node_modules incomplete (%s): running npm ci", m)
			cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "npm ci: %s", out)
			break
		}
	}
	return dir
}

// startA2A runs the @a2a-js/sdk server of interop/node and returns
// host:port.
func startA2A(t *testing.T, dir string) string {
	cmd := exec.Command("node", "a2a-server.mjs")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	var ready struct{ Port int }
	select {
	case l := <-line:
		require.NoError(t, json.Unmarshal([]byte(l), &ready), "a2a-server: %q", l)
	case <-time.After(30 * time.Second):
		t.Fatal("a2a-server did not start")
	}
	return net.JoinHostPort("127.0.0.1", itoa(ready.Port))
}

func itoa(n int) string { return strconv.Itoa(n) }

// rpcMessages returns the JSON-RPC messages of an MCP answer body (JSON or
// server-sent events).
func rpcMessages(t *testing.T, body string) []map[string]any {
	t.Helper()
	body = strings.TrimSpace(body)
	var out []map[string]any
	if strings.HasPrefix(body, "{") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(body), &m))
		return append(out, m)
	}
	for _, l := range strings.Split(body, "\n") {
		if d, ok := strings.CutPrefix(l, "data:"); ok {
			var m map[string]any
			require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(d)), &m), l)
			out = append(out, m)
		}
	}
	require.NotEmpty(t, out, "no JSON-RPC message in %q", body)
	return out
}

// TestInterop: MCP and A2A over the overlay with the official SDKs. Bob
// exposes an MCP server (Go SDK, streamable HTTP) and an A2A server
// (@a2a-js/sdk) on virtual ports; alice calls them through "forward" with
// the Go SDK client, and through "agentnet mcp"'s http tool. Then the
// TypeScript tests (node's test runner) do the same with the official
// TypeScript MCP client and the A2A client, and run TestMCP's flow against
// the binary with the TypeScript MCP client.
func TestInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, runs daemons and node")
	}
	dir := nodeDir(t)
	e := newCLIEnv(t)
	srv := rendezvoustest.New(t)
	rdv := []string{"--rendezvous", srv.Addr().String(), "--rendezvous-key", srv.PublicKey().String()}
	sts := map[string]ctl.Status{}
	for state, host := range map[string]string{"a": "alice", "b": "bob", "c": "carol", "d": "dave"} {
		_, st := e.up(state, append(rdv, "--hostname", host)...)
		sts[state] = st
	}
	trustPair(t, e, "a", "bob", "b", "alice")

	mcpAddr := startBobTools(t)
	a2aAddr := startA2A(t, dir)
	httpAddr := startHTTP(t)
	for port, to := range map[int]string{interopMCPPort: mcpAddr, interopA2APort: a2aAddr, interopHTTPPort: httpAddr} {
		ex := e.start("b", nil, "expose", itoa(port), "--to", to, "--json")
		ex.line()
	}
	forward := func(port int) string {
		fw := e.start("a", nil, "forward", "127.0.0.1:0", "bob:"+itoa(port), "--json")
		var f ctl.Forwarded
		require.NoError(t, json.Unmarshal(fw.line(), &f))
		return f.Listen
	}
	fwdMCP, fwdA2A := forward(interopMCPPort), forward(interopA2APort)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The Go SDK client through forward: initialize → tools/list → tools/call.
	cl := mcp.NewClient(&mcp.Implementation{Name: "go-over-overlay", Version: "1"}, nil)
	cs, err := cl.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: "http://" + fwdMCP + "/mcp"}, nil)
	require.NoError(t, err)
	require.Equal(t, "bob-tools", cs.InitializeResult().ServerInfo.Name)
	lt, err := cs.ListTools(ctx, nil)
	require.NoError(t, err)
	require.Len(t, lt.Tools, 1)
	require.Equal(t, "add", lt.Tools[0].Name)
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]any{"a": 2, "b": 40}})
	require.NoError(t, err)
	require.False(t, res.IsError)
	require.EqualValues(t, 42, res.StructuredContent.(map[string]any)["sum"])
	cs.Close()

	// Alice's LLM agent, through agentnet mcp's http tool (no forward):
	// the same MCP flow by hand, then A2A.
	ma := e.mcp("a", nil)
	hdrs := map[string]any{"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
	post := func(port int, path string, h map[string]any, body any) mcpserver.HTTPResult {
		b, _ := json.Marshal(body)
		var hr mcpserver.HTTPResult
		ma.ok("http", map[string]any{"peer": "bob", "port": port, "method": "POST", "path": path, "headers": h, "body": string(b)}, &hr)
		return hr
	}
	hr := post(interopMCPPort, "/mcp", hdrs, map[string]any{"jsonrpc": "2.0", "id": 1, "method": "initialize",
		"params": map[string]any{"protocolVersion": "2025-06-18", "capabilities": map[string]any{}, "clientInfo": map[string]any{"name": "http-tool", "version": "1"}}})
	require.Equal(t, http.StatusOK, hr.Status, hr.Untrusted.Body.Text)
	require.Equal(t, "eof", hr.Ended)
	session := hr.Untrusted.Headers["Mcp-Session-Id"]
	require.Len(t, session, 1)
	init := rpcMessages(t, hr.Untrusted.Body.Text)[0]["result"].(map[string]any)
	require.Equal(t, "bob-tools", init["serverInfo"].(map[string]any)["name"])
	sh := map[string]any{"Content-Type": "application/json", "Accept": "application/json, text/event-stream", "Mcp-Session-Id": session[0], "Mcp-Protocol-Version": "2025-06-18"}
	hr = post(interopMCPPort, "/mcp", sh, map[string]any{"jsonrpc": "2.0", "method": "notifications/initialized"})
	require.Equal(t, http.StatusAccepted, hr.Status)
	hr = post(interopMCPPort, "/mcp", sh, map[string]any{"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
	tools := rpcMessages(t, hr.Untrusted.Body.Text)[0]["result"].(map[string]any)["tools"].([]any)
	require.Equal(t, "add", tools[0].(map[string]any)["name"])
	hr = post(interopMCPPort, "/mcp", sh, map[string]any{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": map[string]any{"name": "add", "arguments": map[string]any{"a": 1, "b": 2}}})
	sc := rpcMessages(t, hr.Untrusted.Body.Text)[0]["result"].(map[string]any)["structuredContent"].(map[string]any)
	require.EqualValues(t, 3, sc["sum"])

	var card mcpserver.HTTPResult
	ma.ok("http", map[string]any{"peer": "bob", "port": interopA2APort, "path": "/.well-known/agent-card.json", "headers": map[string]any{"A2A-Version": "1.0"}}, &card)
	require.Equal(t, http.StatusOK, card.Status)
	require.Contains(t, card.Untrusted.Body.Text, `"name":"shout"`)
	hr = post(interopA2APort, "/a2a/jsonrpc", map[string]any{"Content-Type": "application/json", "A2A-Version": "1.0"},
		map[string]any{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": map[string]any{"message": map[string]any{"messageId": "m-go", "role": "ROLE_USER", "parts": []any{map[string]any{"text": "through the http tool"}}}}})
	var a2a struct {
		Result struct {
			Task struct {
				Status    struct{ State string }
				Artifacts []struct{ Parts []struct{ Text string } }
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(hr.Untrusted.Body.Text), &a2a), hr.Untrusted.Body.Text)
	require.Equal(t, "TASK_STATE_COMPLETED", a2a.Result.Task.Status.State)
	require.Equal(t, "THROUGH THE HTTP TOOL", a2a.Result.Task.Artifacts[0].Parts[0].Text)

	// The TypeScript side: the official clients over the same overlay, and
	// TestMCP's flow with the TypeScript MCP client.
	env := map[string]string{}
	for _, kv := range e.env("") {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	fx, _ := json.Marshal(map[string]any{
		"bin": e.bin, "home": e.home, "env": env,
		"addrs":   map[string]string{"a": sts["a"].Addr, "b": sts["b"].Addr, "c": sts["c"].Addr, "d": sts["d"].Addr},
		"ports":   map[string]int{"mcp": interopMCPPort, "a2a": interopA2APort, "http": interopHTTPPort},
		"mcp_url": "http://" + fwdMCP + "/mcp", "a2a_url": "http://" + fwdA2A,
	})
	nctx, ncancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer ncancel()
	cmd := exec.CommandContext(nctx, "node", "--test", "--test-reporter=spec", "mcp.test.mjs", "overlay.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AGENTNET_INTEROP="+string(fx))
	out, err := cmd.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	require.NoError(t, err)
	for _, want := range []string{`ℹ tests 3`, `ℹ pass 3`, `ℹ fail 0`, `ℹ skipped 0`} {
		require.Contains(t, string(out), want)
	}
	require.False(t, regexp.MustCompile(`(?m)^\s*✖`).Match(out))
}
