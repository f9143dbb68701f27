package metrics_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/metrics"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestRendezvous: the endpoint serves the server's counters as they
// change, in a format Prometheus parses and lints clean; /readyz turns 503
// when the server stops.
func TestRendezvous(t *testing.T) {
	srv := rendezvoustest.New(t)
	reg := metrics.Rendezvous(srv.Server)
	ms, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg, srv.Ready), nil)
	require.NoError(t, err)
	defer ms.Close()
	base := "http://" + ms.Addr().String()

	code, body := get(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "agentnet_rendezvous_registrations_total 0")
	c := srv.NewClient(nil, nil)
	_, _ = c.Lookup(context.Background(), mustTarget(t, "nobody"))
	code, body = get(t, base+"/metrics")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		"agentnet_rendezvous_registrations_total 1",
		"agentnet_rendezvous_lookups_total 1",
		"agentnet_rendezvous_sessions 1",
		`agentnet_rendezvous_store_agents{store="bbolt"} 1`,
		`agentnet_rendezvous_store_mailbox_messages{store="bbolt"} 0`,
		`agentnet_rendezvous_refused_total{reason="rate_limited"} 0`,
		`agentnet_rendezvous_relay_dropped_total{reason="over_limit"} 0`,
		"agentnet_rendezvous_ready 1",
	} {
		require.Contains(t, body, want)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	_, err = p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	require.NoError(t, err)
	for _, pr := range problems {
		if strings.HasPrefix(pr.Metric, "agentnet_") {
			t.Errorf("lint: %s: %s", pr.Metric, pr.Text)
		}
	}

	code, _ = get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code)
	code, body = get(t, base+"/readyz")
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, srv.Close())
	code, body = get(t, base+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "shutting down")
}

func mustTarget(t *testing.T, s string) addressing.Target {
	t.Helper()
	tg, err := addressing.ParseTarget(s)
	require.NoError(t, err)
	return tg
}
