package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// requireJSONLog checks that every line of log is a JSON object with
// slog's keys (time, level, msg), and returns the objects by message.
func requireJSONLog(t *testing.T, log string) map[string]map[string]any {
	t.Helper()
	byMsg := map[string]map[string]any{}
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		var obj map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &obj), "log line is not a JSON object: %q", l)
		for _, k := range []string{"time", "level", "msg"} {
			require.Contains(t, obj, k, "log line %q", l)
		}
		byMsg[obj["msg"].(string)] = obj
	}
	return byMsg
}

// TestUpLogFormatJSON: "up --log-format json" in the foreground writes its
// log to stderr as one JSON object per line, and AGENTNET_LOG_FORMAT=json
// does the same for a detached daemon's <state>/daemon.log (which before
// the fix also held the human status block), startup warnings included;
// an unknown format is a usage error.
func TestUpLogFormatJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs daemons")
	}
	e := newCLIEnv(t)
	srv := rendezvoustest.New(t)
	rdv := []string{"--rendezvous", srv.Addr().String(), "--rendezvous-key", srv.PublicKey().String()}

	checkReady := func(byMsg map[string]map[string]any, st ctl.Status) {
		t.Helper()
		ready := byMsg["daemon ready"]
		require.NotNil(t, ready, "no \"daemon ready\" line")
		require.Equal(t, "INFO", ready["level"])
		require.Equal(t, st.Addr, ready["addr"])
		require.Equal(t, st.Socket, ready["socket"])
		require.Equal(t, srv.Addr().String(), ready["server"])
		require.Equal(t, "configured", ready["mode"])
		require.Contains(t, byMsg, "daemon shutting down")
	}

	// Foreground, the flag: the log is on stderr.
	d, st := e.up("fg", append(rdv, "--log-format", "json")...)
	require.Equal(t, 0, d.stop(syscall.SIGTERM), "stderr: %s", d.stderr())
	checkReady(requireJSONLog(t, d.stderr()), st)

	// Detached, the environment: the log is in daemon.log.
	cmd := exec.Command(e.bin, append([]string{"up", "--detach", "--json", "--listen", "127.0.0.1:0"}, rdv...)...)
	cmd.Env = append(e.env("bg"), "AGENTNET_LOG_FORMAT=json")
	out, err := cmd.Output()
	require.NoError(t, err, "up --detach: %s", out)
	require.NoError(t, json.Unmarshal(bytes.TrimSpace(out), &st))
	t.Cleanup(func() { syscall.Kill(st.PID, syscall.SIGKILL) })
	var res DownResult
	e.json("bg", "down", &res, "down")
	log, err := os.ReadFile(filepath.Join(e.home, "bg", "daemon.log"))
	require.NoError(t, err)
	checkReady(requireJSONLog(t, string(log)), st)

	// The startup warning (nothing answers at the rendezvous) is a log
	// record too, not a line of text among them.
	d, _ = e.up("warn", "--rendezvous", fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t)), "--rendezvous-tcp", "off", "--log-format", "json")
	require.Equal(t, 0, d.stop(syscall.SIGTERM), "stderr: %s", d.stderr())
	var warned bool
	for msg, obj := range requireJSONLog(t, d.stderr()) {
		warned = warned || obj["level"] == "WARN" && strings.Contains(msg, "not registered")
	}
	require.True(t, warned, "no warning record: %s", d.stderr())

	_, stderr, code := e.run("xml", nil, append([]string{"up", "--log-format", "xml", "--listen", "127.0.0.1:0"}, rdv...)...)
	require.NotEqual(t, 0, code)
	require.Contains(t, string(stderr), `log format "xml": want text or json`)
}
