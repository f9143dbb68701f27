package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRunTiny runs the whole plan at the smallest sizes on every system and
// checks the report's shape: every scenario and metric has a row, every
// cell is a finite number or an n/a with a reason, and nothing failed.
// Timings are never asserted.
func TestRunTiny(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Mode: ModeTiny})
	require.NoError(t, err)

	var want []string
	for _, s := range plan() {
		for _, m := range s.metrics {
			want = append(want, s.name+"/"+m.name)
		}
	}
	var got []string
	for _, row := range rep.Rows {
		got = append(got, row.Scenario+"/"+row.Metric)
		for _, sys := range Systems {
			c, ok := row.Cells[sys]
			require.True(t, ok, "%s %s: no cell for %s", row.Scenario, row.Metric, sys)
			require.Empty(t, c.Error, "%s %s on %s failed", row.Scenario, row.Metric, sys)
			if c.Value == nil {
				require.NotEmpty(t, c.NA, "%s %s on %s: neither value nor reason", row.Scenario, row.Metric, sys)
				continue
			}
			require.False(t, math.IsNaN(*c.Value) || math.IsInf(*c.Value, 0), "%s %s on %s: %v", row.Scenario, row.Metric, sys, *c.Value)
		}
		if row.Ratio != nil {
			require.False(t, math.IsNaN(*row.Ratio) || math.IsInf(*row.Ratio, 0))
		}
	}
	require.Equal(t, want, got)

	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	require.NotContains(t, table.String(), "NaN")
	for _, row := range rep.Rows {
		require.Contains(t, table.String(), row.Metric)
	}
	var js bytes.Buffer
	require.NoError(t, rep.WriteJSON(&js))
	var back map[string]any
	require.NoError(t, json.Unmarshal(js.Bytes(), &back))
	require.False(t, strings.Contains(js.String(), "NaN"))

	// Everything Run started has stopped.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines leaked")
}
