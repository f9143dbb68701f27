package main

// The rendezvous command parses its own flags (rendezvous.go); this file,
// whose init runs after that one's, gives it what every command has: an
// entry in "agentnet context", -h on stdout with exit 0, and with --json one
// JSON object on stdout, the error object included.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"

	"github.com/agentnet/agentnet/ctl"
)

// rawDoc is the catalogue's view of a command that parses its own flags.
type rawDoc struct {
	output  any // the --json output's type
	example string
	errors  []ctl.Code
}

// rendezvousServing is the --json output of "agentnet rendezvous".
type rendezvousServing struct {
	Addr    string `json:"addr"`              // the UDP address it serves on
	Key     string `json:"key"`               // the server's key, for agents to pin
	State   string `json:"state"`             // its state directory
	Store   string `json:"store"`             // the store: bbolt in the state directory, or etcd endpoints and prefix
	TCP     string `json:"tcp,omitempty"`     // the TCP (TLS/WebSocket) address, if it listens on one
	Metrics string `json:"metrics,omitempty"` // the metrics URL, if it serves one
}

func printServing(w io.Writer, asJSON bool, s rendezvousServing) {
	if asJSON {
		b, _ := json.Marshal(s)
		w.Write(append(b, '\n'))
		return
	}
	fmt.Fprintf(w, "rendezvous listening on %s\nserver key %s\nstate in %s\nstore %s\n", s.Addr, s.Key, s.State, s.Store)
	if s.TCP != "" {
		fmt.Fprintf(w, "TCP (TLS/WebSocket) on %s\n", s.TCP)
	}
	if s.Metrics != "" {
		fmt.Fprintf(w, "metrics on %s\n", s.Metrics)
	}
}

func init() {
	commands["rendezvous"].raw = &rawDoc{
		output:  rendezvousServing{},
		example: "agentnet rendezvous -listen :7420 -data /var/lib/agentnet-rendezvous",
		errors:  []ctl.Code{ctl.CodeInvalidArgument, ctl.CodeDamagedState, ctl.CodeInternal},
	}
}

// runRaw runs a command that parses its own flags: -h prints its usage on
// stdout and succeeds; with --json a failure that printed nothing on stdout
// prints the error object there (from its last line on stderr).
func runRaw(ctx context.Context, c *command, args []string, stdout, stderr io.Writer) int {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			c.run(ctx, []string{"-h"}, stdout, stdout)
			return exitOK
		}
	}
	if !jsonRequested(args) {
		return c.run(ctx, args, stdout, stderr)
	}
	out := &countingWriter{w: stdout}
	var errBuf bytes.Buffer
	code := c.run(ctx, args, out, io.MultiWriter(stderr, &errBuf))
	if code != exitOK && out.n == 0 {
		last := ""
		sc := bufio.NewScanner(&errBuf)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "time=") && !strings.HasPrefix(l, "{") {
				last = l
			}
		}
		last = strings.TrimPrefix(last, "agentnet "+c.name+": ")
		ecode := ctl.CodeInternal
		if code == exitUsage {
			ecode = ctl.CodeInvalidArgument
		}
		if strings.Contains(last, "damaged") {
			ecode = ctl.CodeDamagedState
		}
		b, _ := json.Marshal(ctl.ErrorBody{Error: &ctl.Error{Code: ecode, Message: last, Hint: "agentnet " + c.name + " -h lists the flags"}})
		stdout.Write(append(b, '\n'))
	}
	return code
}

type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n += len(b)
	return c.w.Write(b)
}

// rawFlagLine matches a flag in flag.PrintDefaults output: "  -name type".
var rawFlagLine = regexp.MustCompile(`^  -(\S+)(?: (\S+))?$`)

// rawCommandDoc describes c for the catalogue; its flags come from its own
// -h output (flag.PrintDefaults' format).
func rawCommandDoc(c *command) commandDoc {
	var help bytes.Buffer
	c.run(context.Background(), []string{"-h"}, &help, &help)
	flags := []flagDoc{}
	lines := strings.Split(help.String(), "\n")
	for i := 0; i < len(lines); i++ {
		m := rawFlagLine.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		fd := flagDoc{Name: m[1], Type: "bool"}
		switch m[2] {
		case "":
		case "int", "uint", "int64", "uint64":
			fd.Type = "int"
		case "duration":
			fd.Type = "duration"
		default:
			fd.Type = "string"
		}
		for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "    \t") {
			i++
			fd.Usage = strings.TrimSpace(strings.TrimSpace(fd.Usage + " " + strings.TrimPrefix(lines[i], "    \t")))
		}
		if j := strings.LastIndex(fd.Usage, " (default "); j >= 0 && strings.HasSuffix(fd.Usage, ")") {
			fd.Default = strings.Trim(fd.Usage[j+len(" (default "):len(fd.Usage)-1], `"`)
			fd.Usage = fd.Usage[:j]
		}
		flags = append(flags, fd)
	}
	doc := commandDoc{
		Name: c.name, Summary: c.summary, Usage: "agentnet " + c.name + " [flags]", Args: []cliArg{}, Flags: flags,
		Streaming: true, Example: c.raw.example, Errors: append([]ctl.Code{}, c.raw.errors...),
	}
	doc.Output = schemaOf(reflect.TypeOf(c.raw.output))
	return doc
}
