package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRendezvousConfigFile: the config file sets flags and limits, flags
// on the command line win, and every mistake is refused with the key named
// before anything starts.
func TestRendezvousConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "rdv.json")
		require.NoError(t, os.WriteFile(p, []byte(s), 0o600))
		return p
	}
	run := func(args ...string) (int, string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		var out, errb bytes.Buffer
		code := runRendezvous(ctx, args, &out, &errb)
		return code, out.String(), errb.String()
	}
	cfg := write(`{"listen": "127.0.0.1:0", "log-format": "json", "limits": {"key-rate": 5, "relay-idle": "30s"}, "data": "` + filepath.Join(dir, "from-file") + `"}`)
	code, out, errOut := run("-config", cfg, "-data", filepath.Join(dir, "from-flag"))
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "state in "+filepath.Join(dir, "from-flag"), "the flag wins over the file")
	require.Contains(t, out, "store bbolt")
	require.True(t, strings.HasPrefix(errOut, "{"), "log-format json from the file: %s", errOut)

	for body, want := range map[string]string{
		`{"listn": "x"}`:                 `unknown key "listn"`,
		`{"limits": {"key-rat": 1}}`:     `unknown key "key-rat"`,
		`{"limits": {"relay-idle": 30}}`: `relay-idle: want a duration string`,
		`{"listen": ["a"]}`:              `want a string, number or boolean`,
		`{"log-format": "xml"}`:          `log format "xml"`,
		`{"store": "mysql://x"}`:         `-store "mysql://x"`,
		`{"store": "etcd://nohost"}`:     `want host:port`,
		`{} {}`:                          `data after the JSON object`,
		`{"v": "maybe"}`:                 `"v"`,
	} {
		code, _, errOut := run("-config", write(body), "-data", filepath.Join(dir, "d"))
		require.Equal(t, 2, code, body)
		require.Contains(t, errOut, want, body)
	}
	code, _, errOut = run("-config", filepath.Join(dir, "missing.json"))
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "no such file")
}
