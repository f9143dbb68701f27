package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
)

// Every command's flags coexist with the common ones (a clash panics).
func TestCommandFlagsDoNotClash(t *testing.T) {
	for _, c := range cliCommands {
		fs := flag.NewFlagSet(c.name(), flag.ContinueOnError)
		var cf commonFlags
		addCommonFlags(fs, &cf, time.Second)
		require.NotPanics(t, func() { c.setup(fs) }, c.name())
	}
}

func TestSplitArgs(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Int("c", 4, "")
	fs.Bool("json", false, "")
	fs.String("data", "", "")
	for _, tc := range []struct {
		name       string
		in         []string
		flags, pos []string
		err        bool
	}{
		{"flags after args", []string{"bob", "-c", "3", "--json"}, []string{"-c", "3", "--json"}, []string{"bob"}, false},
		{"equals", []string{"--data=x", "bob"}, []string{"--data=x"}, []string{"bob"}, false},
		{"negative number is an arg", []string{"bob", "-5"}, nil, []string{"bob", "-5"}, false},
		{"double dash", []string{"--json", "--", "-c"}, []string{"--json"}, []string{"-c"}, false},
		{"unknown", []string{"--nope"}, nil, nil, true},
		{"missing value", []string{"bob", "-c"}, nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags, pos, err := splitArgs(fs, tc.in)
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.flags, flags)
			require.Equal(t, tc.pos, pos)
		})
	}
}

func TestSchemaOf(t *testing.T) {
	s := schemaOf(reflect.TypeOf(ctl.TrustList{}))
	require.Equal(t, "object", s["type"])
	recs := s["properties"].(map[string]any)["records"].(map[string]any)
	require.Equal(t, "array", recs["type"])
	item := recs["items"].(map[string]any)
	require.Equal(t, "date-time", item["properties"].(map[string]any)["created"].(map[string]any)["format"])
	require.Contains(t, schemaOf(reflect.TypeOf(ctl.PublishRequest{}))["required"], "topic")
	require.NotContains(t, schemaOf(reflect.TypeOf(ctl.PublishRequest{}))["required"], "to")
}

func TestErrorsAndExitCodes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"status", "--socket", sock, "--json"}, &out, &errb)
	require.Equal(t, exitError, code)
	var eb ctl.ErrorBody
	require.NoError(t, json.Unmarshal(out.Bytes(), &eb))
	require.Equal(t, ctl.CodeNotRunning, eb.Error.Code)
	require.Contains(t, errb.String(), "not_running")
	require.Contains(t, errb.String(), "hint: ")

	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"ping", "--json"}, &out, &errb)
	require.Equal(t, exitUsage, code)
	require.NoError(t, json.Unmarshal(out.Bytes(), &eb))
	require.Equal(t, ctl.CodeInvalidArgument, eb.Error.Code)

	out.Reset()
	code = run(context.Background(), []string{"send", "bob", "70000", "--socket", sock}, &out, &errb)
	require.Equal(t, exitUsage, code)
	require.Empty(t, out.String(), "no --json: nothing on stdout")

	out.Reset()
	require.Equal(t, exitOK, run(context.Background(), []string{"trust", "-h"}, &out, &errb))
	require.Contains(t, out.String(), "agentnet trust approve <peer>")
	out.Reset()
	require.Equal(t, exitOK, run(context.Background(), []string{"ping", "-h"}, &out, &errb))
	require.Contains(t, out.String(), "  -c ")
	require.Equal(t, exitUsage, run(context.Background(), []string{"trust", "nope"}, &out, &errb))
}

// TestRawCommands: demo and rendezvous, like every command, are in the
// catalogue with their flags and output schema, accept --json (one object
// on stdout, the error object on failure) and exit 0 on -h. Before the fix
// both were missing from "context", rejected --json and exited 2 on -h.
func TestRawCommands(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, exitOK, run(context.Background(), []string{"context", "--json"}, &out, &errb))
	var cat catalogue
	require.NoError(t, json.Unmarshal(out.Bytes(), &cat))
	docs := map[string]commandDoc{}
	for _, c := range cat.Commands {
		docs[c.Name] = c
	}
	for name, flag := range map[string]string{"demo": "pings", "rendezvous": "listen"} {
		d, ok := docs[name]
		require.True(t, ok, "%s is in the catalogue", name)
		require.NotNil(t, d.Output["properties"], name)
		var names []string
		for _, f := range d.Flags {
			names = append(names, f.Name)
		}
		require.Contains(t, names, flag, name)

		out.Reset()
		errb.Reset()
		require.Equal(t, exitOK, run(context.Background(), []string{name, "-h"}, &out, &errb), name)
		require.Contains(t, out.String(), "-"+flag, name)
	}

	out.Reset()
	errb.Reset()
	code := run(context.Background(), []string{"rendezvous", "--json", "-listen", "nonsense:x", "-data", t.TempDir()}, &out, &errb)
	require.NotEqual(t, exitOK, code)
	var eb ctl.ErrorBody
	require.NoError(t, json.Unmarshal(out.Bytes(), &eb), out.String())
	require.NotEmpty(t, eb.Error.Message)

	// The rendezvous serves and says so in one object.
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"rendezvous", "--json", "-listen", "127.0.0.1:0", "-data", t.TempDir()}, pw, io.Discard)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadBytes('\n')
	require.NoError(t, err)
	var srv rendezvousServing
	require.NoError(t, json.Unmarshal(line, &srv))
	require.NotEmpty(t, srv.Key)
	require.Contains(t, srv.Addr, "127.0.0.1:")
	cancel()
	go io.Copy(io.Discard, pr)
	require.Equal(t, exitOK, <-done)

	// The demo's --json output is one object matching its schema.
	out.Reset()
	dctx, dcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer dcancel()
	require.Equal(t, exitOK, run(dctx, []string{"demo", "--json", "--pings", "3"}, &out, &errb), errb.String())
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	require.Len(t, lines, 1)
	requireSchema(t, docs["demo"].Output, lines[0])
	var dr demoResult
	require.NoError(t, json.Unmarshal(lines[0], &dr))
	require.True(t, dr.Complete)
	require.Greater(t, len(dr.Steps), 8)
}
