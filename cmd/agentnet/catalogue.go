package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/daemon"
)

// catalogue is what "agentnet context" prints: every command with its
// arguments, flags, output schema and error codes, for programs and LLM
// agents that drive the CLI.
type catalogue struct {
	Tool        string           `json:"tool"`
	Version     string           `json:"version"`
	Summary     string           `json:"summary"`
	Conventions []string         `json:"conventions"`
	ExitCodes   map[string]int   `json:"exit_codes"`
	CommonFlags []flagDoc        `json:"common_flags"`
	Settings    []daemon.Setting `json:"settings"`
	ErrorSchema map[string]any   `json:"error_schema"`
	Errors      []ctl.CodeInfo   `json:"errors"`
	Commands    []commandDoc     `json:"commands"`
}

type commandDoc struct {
	Name      string         `json:"name"`
	Summary   string         `json:"summary"`
	Usage     string         `json:"usage"`
	Args      []cliArg       `json:"args"`
	Flags     []flagDoc      `json:"flags"`
	Streaming bool           `json:"streaming"`
	Output    map[string]any `json:"output"` // JSON Schema of the --json output (of each line when streaming); null: raw bytes
	Errors    []ctl.Code     `json:"errors"`
	Example   string         `json:"example"`
}

type flagDoc struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Default string `json:"default"`
	Usage   string `json:"usage"`
}

func init() {
	registerCLI(&cliCommand{
		noun: "context", summary: "print the machine-readable catalogue of every command (for LLM agents)",
		output: catalogue{}, daemonless: true,
		example: "agentnet context --json",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) { return buildCatalogue(), nil }
		},
		human: func(w io.Writer, v any) {
			c := v.(catalogue)
			fmt.Fprintf(w, "%s %s: %s\n\n", c.Tool, c.Version, c.Summary)
			for _, s := range c.Conventions {
				fmt.Fprintf(w, "- %s\n", s)
			}
			fmt.Fprintln(w, "\ncommands:")
			for _, cmd := range c.Commands {
				fmt.Fprintf(w, "  %-48s %s\n", strings.TrimPrefix(cmd.Usage, "agentnet "), cmd.Summary)
			}
			fmt.Fprintln(w, "\nerror codes:")
			for _, e := range c.Errors {
				fmt.Fprintf(w, "  %-18s %s\n", e.Code, e.Description)
			}
			fmt.Fprintln(w, "\n\"agentnet context --json\" prints all of it with the JSON Schema of every command's output.")
		},
	})
}

func buildCatalogue() catalogue {
	c := catalogue{
		Tool:    "agentnet",
		Version: version,
		Summary: "a network stack for AI agents: permanent addresses, bilateral trust, encrypted streams on virtual ports",
		Conventions: []string{
			"commands are \"agentnet <noun> [<verb>] [args] [flags]\"; flags may follow arguments",
			"every command except up, version and context is a client of the daemon started by \"agentnet up\"; it finds the daemon's socket through --socket, AGENTNET_SOCKET, --state, AGENTNET_STATE or AGENTNET_HOME",
			"--json prints exactly one JSON object on stdout matching the command's output schema; streaming commands print one such object per line (JSON Lines)",
			"on failure a command exits non-zero, prints \"agentnet <command>: <code>: <message>\" and \"hint: ...\" on stderr, and with --json prints the error object (error_schema) on stdout",
			"a peer is named by address (0:3f2a.91c0.0b17) or hostname; trust must be mutual before any other command reaches it",
			"connect carries raw bytes on stdin/stdout; expose, forward, recv and events subscribe keep running until interrupted (or -n is reached)",
		},
		ExitCodes:   map[string]int{"ok": exitOK, "error": exitError, "usage": exitUsage},
		Settings:    daemon.Settings,
		ErrorSchema: schemaOf(reflect.TypeOf(ctl.ErrorBody{})),
		Errors:      ctl.Codes,
	}
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	var cf commonFlags
	addCommonFlags(fs, &cf, 30*time.Second)
	c.CommonFlags = flagDocs(fs)
	for _, cmd := range cliCommands {
		fs := flag.NewFlagSet(cmd.name(), flag.ContinueOnError)
		cmd.setup(fs)
		doc := commandDoc{
			Name: cmd.name(), Summary: cmd.summary, Usage: cmd.usage(), Args: cmd.args, Flags: flagDocs(fs),
			Streaming: cmd.streaming, Example: cmd.example, Errors: append([]ctl.Code{}, cmd.errors...),
		}
		if doc.Args == nil {
			doc.Args = []cliArg{}
		}
		if !cmd.daemonless {
			doc.Errors = appendCodes(doc.Errors, ctl.CodeInvalidArgument, ctl.CodeNotRunning, ctl.CodeInternal)
		}
		if cmd.output != nil {
			doc.Output = schemaOf(reflect.TypeOf(cmd.output))
		} else {
			doc.Output = map[string]any{"type": "null", "description": "no JSON on success: stdout carries the stream's raw bytes"}
		}
		c.Commands = append(c.Commands, doc)
	}
	for _, rc := range commands {
		if rc.raw != nil {
			c.Commands = append(c.Commands, rawCommandDoc(rc))
		}
	}
	sort.Slice(c.Commands, func(i, j int) bool { return c.Commands[i].Name < c.Commands[j].Name })
	return c
}

func appendCodes(cs []ctl.Code, more ...ctl.Code) []ctl.Code {
	for _, m := range more {
		found := false
		for _, c := range cs {
			found = found || c == m
		}
		if !found {
			cs = append(cs, m)
		}
	}
	return cs
}

func flagDocs(fs *flag.FlagSet) []flagDoc {
	out := []flagDoc{}
	fs.VisitAll(func(f *flag.Flag) {
		typ := "string"
		switch f.Value.(type) {
		case interface{ IsBoolFlag() bool }:
			typ = "bool"
		}
		switch reflect.TypeOf(f.Value).String() {
		case "*flag.intValue", "*flag.int64Value":
			typ = "int"
		case "*flag.durationValue":
			typ = "duration"
		}
		out = append(out, flagDoc{Name: f.Name, Type: typ, Default: f.DefValue, Usage: f.Usage})
	})
	return out
}

var (
	timeType    = reflect.TypeOf(time.Time{})
	rawJSONType = reflect.TypeOf(json.RawMessage{})
)

// schemaOf derives the JSON Schema of t's encoding/json form: objects list
// their properties, require those without omitempty, and allow no others.
func schemaOf(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t == rawJSONType:
		return map[string]any{}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem())
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem())}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		props := map[string]any{}
		required := []string{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = schemaOf(f.Type)
			if !strings.Contains(opts, "omitempty") {
				required = append(required, name)
			}
		}
		return map[string]any{"type": "object", "properties": props, "required": required, "additionalProperties": false}
	}
	return map[string]any{}
}
