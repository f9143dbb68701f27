package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/mcpserver"
)

// listFlag collects a repeatable, comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func init() {
	registerCLI(&cliCommand{
		noun: "mcp", summary: "serve MCP on stdin/stdout: this node's tools for an LLM agent, consent by the operator's policy",
		streaming: true, daemonless: false,
		errors:  []ctl.Code{ctl.CodeInvalidArgument, ctl.CodeNotRunning},
		example: "agentnet mcp --state /tmp/alice --approve never",
		setup:   setupMCP,
	})
}

func setupMCP(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
	approve := fs.String("approve", "never", "consent policy for trust_request, trust_approve, network_invite, network_join: never (the operator runs the command the tool answers), ask (a human confirms through MCP elicitation), allow (the model decides)")
	var allowKeys, allowNets, tools, disable listFlag
	fs.Var(&allowKeys, "allow-key", "peer key the model may grant consent to without asking (repeatable, comma-separated)")
	fs.Var(&allowNets, "allow-network", "network (name or ID) whose members' trust requests the model may approve without asking (repeatable)")
	fs.Var(&tools, "tools", "enable only these tools (comma-separated; default all: "+strings.Join(mcpserver.ToolNames(), ",")+")")
	fs.Var(&disable, "disable-tools", "switch these tools off (comma-separated)")
	sendDir := fs.String("send-dir", "", "the only directory file_send may read local files from (default: none, content only)")
	maxData := fs.Int("max-data", 16<<10, "bound, in bytes, of each peer-sent field in an answer")
	up := fs.Bool("up", false, "start the daemon (agentnet up --detach) if none runs for the state directory")
	logLevel := fs.String("log-level", "warn", "stderr diagnostics: debug, info, warn or error")
	return func(x *cliCtx) (any, error) {
		a, err := mcpserver.ParseApprove(*approve)
		if err != nil {
			return nil, badUsage("--approve: %v", err)
		}
		var keys []addressing.PublicKey
		for _, s := range allowKeys {
			k, err := addressing.ParsePublicKey(s)
			if err != nil {
				return nil, badUsage("--allow-key %q: %v (a key, as \"agentnet status\" prints it)", s, err)
			}
			keys = append(keys, k)
		}
		if *maxData < 256 || *maxData > 1<<20 {
			return nil, badUsage("--max-data %d: want 256-1048576", *maxData)
		}
		if *sendDir != "" {
			if fi, err := os.Stat(*sendDir); err != nil || !fi.IsDir() {
				return nil, badUsage("--send-dir %s: not a directory", *sendDir)
			}
		}
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(*logLevel)); err != nil {
			return nil, badUsage("--log-level %q: want debug, info, warn or error", *logLevel)
		}
		log := slog.New(slog.NewTextHandler(x.stderr, &slog.HandlerOptions{Level: lv}))
		startHint := "agentnet up --detach" + stateArgs(fs)
		srv, err := mcpserver.New(mcpserver.Config{
			Client:  x.client,
			Version: version,
			Policy: mcpserver.Policy{
				Approve: a, AllowKeys: keys, AllowNetworks: allowNets,
				Tools: tools, Disable: disable, SendDir: *sendDir, MaxData: *maxData,
			},
			StartHint: startHint + " (or give agentnet mcp --up)",
			Logger:    log,
		})
		if err != nil {
			return nil, badUsage("%v", strings.TrimPrefix(err.Error(), "mcpserver: "))
		}
		ctx, cancel := context.WithTimeout(x.ctx, 5*time.Second)
		var st ctl.Status
		err = x.client.Do(ctx, http.MethodGet, ctl.PathStatus, nil, &st)
		cancel()
		switch {
		case err == nil:
			log.Info("serving MCP", "addr", st.Addr, "state", st.StateDir, "approve", a)
		case ctl.CodeOf(err) == ctl.CodeNotRunning && *up:
			if err := startDaemon(x, fs); err != nil {
				return nil, err
			}
		case ctl.CodeOf(err) == ctl.CodeNotRunning:
			fmt.Fprintf(x.stderr, "agentnet mcp: no daemon answers on %s; tools answer not_running until one does. Start it: %s\n", x.client.Socket(), startHint)
		default:
			log.Warn("daemon status", "err", err)
		}
		if err := srv.Run(x.ctx, &mcp.StdioTransport{}); err != nil && x.ctx.Err() == nil {
			return nil, &ctl.Error{Code: ctl.CodeInternal, Message: "mcp: " + err.Error()}
		}
		return nil, nil
	}
}

// stateArgs repeats the --state and --socket flags the command was given.
func stateArgs(fs *flag.FlagSet) string {
	var b strings.Builder
	for _, n := range []string{"state", "socket"} {
		if v := fs.Lookup(n).Value.String(); v != "" {
			fmt.Fprintf(&b, " --%s %s", n, shellWord(v))
		}
	}
	return b.String()
}

func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@+,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// startDaemon runs "agentnet up --detach" for the same state directory.
func startDaemon(x *cliCtx, fs *flag.FlagSet) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"up", "--detach", "--json"}
	for _, n := range []string{"state", "socket"} {
		if v := fs.Lookup(n).Value.String(); v != "" {
			args = append(args, "--"+n, v)
		}
	}
	cmd := exec.CommandContext(x.ctx, exe, args...)
	cmd.Stderr = x.stderr
	out, err := cmd.Output()
	if err != nil {
		return &ctl.Error{Code: ctl.CodeNotRunning, Message: fmt.Sprintf("agentnet mcp --up: starting the daemon failed: %v: %s", err, strings.TrimSpace(string(out))),
			Hint: "start it yourself: agentnet up --detach" + stateArgs(fs)}
	}
	fmt.Fprintf(x.stderr, "agentnet mcp: started the daemon: %s", out)
	return nil
}
