package main

// The client commands: "agentnet <noun> [<verb>] [args] [flags]". Each is a
// thin client of the daemon's control API (package ctl). This file holds the
// shared machinery: flag parsing (flags may follow arguments), the socket,
// output as human text or one JSON object (--json), errors with a stable code
// and a hint, and the catalogue that "agentnet context" prints.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/daemon"
)

// Exit codes of the client commands.
const (
	exitOK    = 0
	exitError = 1 // the operation failed; the error code says why
	exitUsage = 2 // bad flags or arguments (code invalid_argument)
)

// cliArg is a positional argument.
type cliArg struct {
	Name     string `json:"name"`
	Help     string `json:"help"`
	Optional bool   `json:"optional"`
	Variadic bool   `json:"variadic"`
}

// cliCommand is one client command.
type cliCommand struct {
	noun, verb string
	summary    string
	args       []cliArg
	// streaming commands print one JSON object per line (JSON Lines) with
	// --json, each matching output, until they end or are interrupted.
	streaming bool
	// output is a value of the type printed with --json (its schema is
	// derived by reflection).
	output any
	// errors lists the codes the command reports besides the common ones.
	errors  []ctl.Code
	example string
	// daemonless commands do not talk to a daemon.
	daemonless bool
	// setup defines the command's flags and returns its body.
	setup func(fs *flag.FlagSet) func(x *cliCtx) (any, error)
	// human prints a result as text; nil prints it field by field.
	human func(w io.Writer, v any)
}

func (c *cliCommand) name() string {
	if c.verb == "" {
		return c.noun
	}
	return c.noun + " " + c.verb
}

func (c *cliCommand) usage() string {
	var b strings.Builder
	b.WriteString("agentnet " + c.name())
	for _, a := range c.args {
		n := "<" + a.Name + ">"
		if a.Variadic {
			n += "..."
		}
		if a.Optional {
			n = "[" + n + "]"
		}
		b.WriteString(" " + n)
	}
	b.WriteString(" [flags]")
	return b.String()
}

// cliCommands in registration order; nouns maps a noun to its commands.
var (
	cliCommands []*cliCommand
	nouns       = map[string][]*cliCommand{}
	nounSummary = map[string]string{}
)

// registerCLI adds a client command and, for a new noun, the noun to the
// binary's command table.
func registerCLI(c *cliCommand) {
	cliCommands = append(cliCommands, c)
	if _, ok := nouns[c.noun]; !ok {
		noun := c.noun
		register(&command{name: noun, summary: c.summary, run: func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
			return dispatch(ctx, noun, args, stdout, stderr)
		}})
	}
	nouns[c.noun] = append(nouns[c.noun], c)
	if c.verb != "" {
		verbs := make([]string, 0)
		for _, v := range nouns[c.noun] {
			verbs = append(verbs, v.verb)
		}
		nounSummary[c.noun] = strings.Join(verbs, "|")
		commands[c.noun].summary = nounSummary[c.noun] + ": " + nounDoc[c.noun]
	}
}

// nounDoc describes nouns whose commands have verbs.
var nounDoc = map[string]string{
	"trust":    "consent to talk: request, decide, list, revoke, forget",
	"hostname": "claim or release this node's hostname",
	"file":     "send a file to a peer's inbox",
	"message":  "send a typed message to a peer's inbox",
	"inbox":    "messages and files received",
	"events":   "publish and subscribe to events",
	"network":  "networks: members reach each other without trust requests",
}

// cliCtx is what a command body works with.
type cliCtx struct {
	ctx            context.Context
	cmd            *cliCommand
	args           []string
	stdout, stderr io.Writer
	json           bool
	client         *ctl.Client
	timeout        time.Duration
	timeoutSet     bool // --timeout given
	stdin          io.Reader
	written        *int // bytes printed on stdout so far
}

// timeoutMS is --timeout in milliseconds for a request's timeout_ms field,
// or 0 (the daemon's default) if it was not given.
func timeoutMS(x *cliCtx) int {
	if !x.timeoutSet {
		return 0
	}
	return int(min(max(x.timeout.Milliseconds(), 1), 3_600_000))
}

// call runs one request within the --timeout; the daemon is told the
// deadline (ctl.TimeoutHeader), so a timeout is reported by the daemon for
// what it waited on, not blamed on the daemon.
func (x *cliCtx) call(method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(x.ctx, x.timeout)
	defer cancel()
	return x.client.Do(ctx, method, path, in, out)
}

// emit prints one result: a JSON line, or text.
func (x *cliCtx) emit(v any) {
	if x.json {
		b, _ := json.Marshal(v)
		x.stdout.Write(append(b, '\n'))
		return
	}
	if x.cmd.human != nil {
		x.cmd.human(x.stdout, v)
		return
	}
	printFields(x.stdout, v)
}

// note prints a diagnostic on stderr (never stdout, which carries results).
func (x *cliCtx) note(format string, args ...any) {
	fmt.Fprintf(x.stderr, format+"\n", args...)
}

// stdinReader is where connect and send read from; tests replace it.
var stdinReader io.Reader = os.Stdin

// usageError is a command-line mistake.
func usageError(format string, args ...any) *ctl.Error {
	return &ctl.Error{Code: ctl.CodeInvalidArgument, Message: fmt.Sprintf(format, args...), Hint: "see \"agentnet <command> -h\" or \"agentnet context\""}
}

// commonFlags are accepted by every client command.
type commonFlags struct {
	json    bool
	socket  string
	state   string
	timeout time.Duration
}

func addCommonFlags(fs *flag.FlagSet, c *commonFlags, def time.Duration) {
	fs.BoolVar(&c.json, "json", false, "print exactly one JSON object (JSON Lines for streaming commands)")
	fs.StringVar(&c.socket, "socket", "", "daemon control socket (default: $AGENTNET_SOCKET, else <state>/agentnet.sock)")
	fs.StringVar(&c.state, "state", "", "daemon state directory (default: $AGENTNET_STATE, else $AGENTNET_HOME/node, else <user config dir>/agentnet/node)")
	fs.DurationVar(&c.timeout, "timeout", def, "give up after this long")
}

func dispatch(ctx context.Context, noun string, args []string, stdout, stderr io.Writer) int {
	cmds := nouns[noun]
	var c *cliCommand
	if cmds[0].verb == "" {
		c = cmds[0]
	} else {
		// A noun with a "list" verb lists by default ("agentnet inbox").
		if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
			for _, v := range cmds {
				if v.verb == "list" {
					return runCLI(ctx, v, args, stdout, stderr)
				}
			}
		}
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			w := stderr
			code := exitUsage
			if len(args) > 0 {
				w, code = stdout, exitOK
			}
			fmt.Fprintf(w, "usage: agentnet %s <%s> ...\n\n", noun, nounSummary[noun])
			for _, v := range cmds {
				fmt.Fprintf(w, "  %-44s %s\n", v.usage(), v.summary)
			}
			return code
		}
		for _, v := range cmds {
			if v.verb == args[0] {
				c = v
			}
		}
		if c == nil {
			fmt.Fprintf(stderr, "agentnet %s: unknown verb %q (want %s)\n", noun, args[0], nounSummary[noun])
			return exitUsage
		}
		args = args[1:]
	}
	return runCLI(ctx, c, args, stdout, stderr)
}

func runCLI(ctx context.Context, c *cliCommand, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(c.name(), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf commonFlags
	def := 30 * time.Second
	if c.streaming {
		def = 0
	}
	addCommonFlags(fs, &cf, def)
	body := c.setup(fs)
	out := &countingWriter{w: stdout}
	x := &cliCtx{ctx: ctx, cmd: c, stdout: out, stderr: stderr, stdin: stdinReader, written: &out.n}
	fail := func(e *ctl.Error, code int) int {
		printError(x, e)
		return code
	}
	flags, pos, err := splitArgs(fs, args)
	if err == nil {
		err = fs.Parse(flags)
	}
	x.json = cf.json || jsonRequested(args)
	if errors.Is(err, flag.ErrHelp) {
		printCommandHelp(stdout, c, fs)
		return exitOK
	}
	if err != nil {
		return fail(usageError("%v", err), exitUsage)
	}
	if err := checkArgs(c, pos); err != nil {
		return fail(err, exitUsage)
	}
	x.args = pos
	x.timeout = cf.timeout
	x.timeoutSet = flagSet(fs, "timeout")
	if x.timeout <= 0 {
		x.timeout = 365 * 24 * time.Hour
	}
	if !c.daemonless {
		x.client = ctl.NewClient(socketPath(cf))
	}
	res, err := body(x)
	if err != nil {
		e := toCtlError(err)
		code := exitError
		if e.Code == ctl.CodeInvalidArgument && isUsage(err) {
			code = exitUsage
		}
		return fail(e, code)
	}
	if res != nil {
		x.emit(res)
	}
	return exitOK
}

// usageErr marks errors found before talking to the daemon.
type usageErr struct{ e *ctl.Error }

func (u usageErr) Error() string { return u.e.Error() }

func isUsage(err error) bool {
	var u usageErr
	return errors.As(err, &u)
}

func toCtlError(err error) *ctl.Error {
	var u usageErr
	if errors.As(err, &u) {
		return u.e
	}
	var e *ctl.Error
	if errors.As(err, &e) {
		return e
	}
	return &ctl.Error{Code: ctl.CodeInternal, Message: err.Error()}
}

// badUsage returns a usage error for a command body.
func badUsage(format string, args ...any) error {
	return usageErr{usageError(format, args...)}
}

// printError reports an error: code, message and hint on stderr, and with
// --json the error object on stdout, unless stdout carries raw stream
// data (connect) that was already printed.
func printError(x *cliCtx, e *ctl.Error) {
	fmt.Fprintf(x.stderr, "agentnet %s: %s: %s\n", x.cmd.name(), e.Code, e.Message)
	if e.PeerText != "" {
		// The peer's words, quoted so that they cannot pass for ours.
		fmt.Fprintf(x.stderr, "the peer said: %q\n", e.PeerText)
	}
	if e.Hint != "" {
		fmt.Fprintf(x.stderr, "hint: %s\n", e.Hint)
	}
	raw := x.cmd.output == nil && x.cmd.streaming
	if x.json && (!raw || x.written == nil || *x.written == 0) {
		b, _ := json.Marshal(ctl.ErrorBody{Error: e})
		x.stdout.Write(append(b, '\n'))
	}
}

// jsonRequested spots --json even when flag parsing failed, so the error is
// reported as JSON too.
func jsonRequested(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--json" || a == "-json" || a == "--json=true" || a == "-json=true" {
			return true
		}
	}
	return false
}

func socketPath(cf commonFlags) string {
	if cf.socket != "" {
		return cf.socket
	}
	if s := os.Getenv("AGENTNET_SOCKET"); s != "" {
		return s
	}
	dir := cf.state
	if dir == "" {
		dir = daemon.DefaultStateDir()
	}
	return daemon.SocketPath(dir)
}

// splitArgs separates flags from positional arguments, so flags may come
// after arguments ("agentnet ping bob -c 3"). "--" ends the flags.
func splitArgs(fs *flag.FlagSet, args []string) (flags, pos []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' || isNumber(a) {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			if name == "h" || name == "help" {
				continue
			}
			return nil, nil, fmt.Errorf("unknown flag %s", a)
		}
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			continue
		}
		if i+1 >= len(args) {
			return nil, nil, fmt.Errorf("flag %s needs a value", a)
		}
		flags = append(flags, args[i+1])
		i++
	}
	return flags, pos, nil
}

func isNumber(s string) bool {
	_, err := fmt.Sscanf(s, "%g", new(float64))
	return err == nil
}

func checkArgs(c *cliCommand, pos []string) *ctl.Error {
	min, max := 0, 0
	for _, a := range c.args {
		if a.Variadic {
			max = 1 << 30
		} else {
			max++
		}
		if !a.Optional {
			min++
		}
	}
	if len(pos) < min || len(pos) > max {
		return usageError("usage: %s", c.usage())
	}
	return nil
}

func printCommandHelp(w io.Writer, c *cliCommand, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n", c.usage(), c.summary)
	if len(c.args) > 0 {
		fmt.Fprintln(w, "\narguments:")
		for _, a := range c.args {
			fmt.Fprintf(w, "  %-14s %s\n", a.Name, a.Help)
		}
	}
	fmt.Fprintln(w, "\nflags:")
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			def = " (default " + f.DefValue + ")"
		}
		dashes := "--"
		if len(f.Name) == 1 {
			dashes = "-"
		}
		fmt.Fprintf(w, "  %-20s %s%s\n", dashes+f.Name, f.Usage, def)
	})
	if c.example != "" {
		fmt.Fprintf(w, "\nexample:\n  %s\n", c.example)
	}
}

// printFields prints a struct field by field ("name: value"), for commands
// without their own text form.
func printFields(w io.Writer, v any) {
	rv := reflect.Indirect(reflect.ValueOf(v))
	if rv.Kind() != reflect.Struct {
		fmt.Fprintln(w, v)
		return
	}
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		fv := rv.Field(i)
		if fv.IsZero() {
			continue
		}
		val := fv.Interface()
		if t, ok := val.(time.Time); ok {
			val = t.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%-12s %v\n", name+":", val)
	}
}
