package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// TestMetrics: GET /v1/metrics on the control socket and the optional TCP
// listener answer the Prometheus text format with the node's counters;
// /readyz follows the rendezvous registration.
func TestMetrics(t *testing.T) {
	checkNoLeaks(t)
	// b serves the TCP listener too.
	a, b := pair(t, Config{MetricsAddr: "127.0.0.1:0"})
	sock := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", a.Socket())
	}}}
	get := func(cl *http.Client, url string) (int, string) {
		resp, err := cl.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, body := get(sock, "http://agentnet"+PathMetrics)
	require.Equal(t, http.StatusOK, code)
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err, "valid Prometheus text format")
	for _, name := range []string{
		"agentnet_node_rendezvous_registered", "agentnet_node_trusted_peers", "agentnet_node_links",
		"agentnet_node_dials_total", "agentnet_node_punch_attempts_total", "agentnet_node_birthday_successes_total",
		"agentnet_node_path_changes_total", "agentnet_node_refused_total", "go_goroutines",
	} {
		require.Contains(t, fams, name)
	}
	require.Contains(t, body, "agentnet_node_rendezvous_registered 1")
	require.Contains(t, body, "agentnet_node_trusted_peers 1")
	for _, kind := range []string{"dead_path", "failover", "repair", "repaired", "redirect"} {
		require.Contains(t, body, `agentnet_node_path_changes_total{kind="`+kind+`"} 0`)
	}

	addr := b.MetricsAddr()
	require.NotEmpty(t, addr)
	code, body = get(http.DefaultClient, "http://"+addr+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "agentnet_node_trusted_peers 1")
	code, _ = get(http.DefaultClient, "http://"+addr+"/healthz")
	require.Equal(t, http.StatusOK, code)
	code, body = get(http.DefaultClient, "http://"+addr+"/readyz")
	require.Equal(t, http.StatusOK, code, body)
	b.stop()
	_, err = (&net.Dialer{Timeout: time.Second}).Dial("tcp", addr)
	require.Error(t, err, "the listener closes with the daemon")
}
