package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
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
