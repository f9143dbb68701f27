package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDemo runs the README's first command in process and checks every
// step it promises happened.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"demo", "-pings", "5"}, &out, &errb)
	require.Equal(t, 0, code, "stderr: %s\nstdout: %s", errb.String(), out.String())
	s := out.String()
	for _, want := range []string{
		"before any trust -> refused",
		"trust is mutual",
		`bob received "hello over a stream"`,
		`bob received "hello over a datagram"`,
		"echo on bob:7, 5 round trips",
		"alice's read fails",
		"alice dials bob again -> refused",
		"demo complete",
	} {
		require.True(t, strings.Contains(s, want), "demo output lacks %q:\n%s", want, s)
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 2, run(context.Background(), []string{"nope"}, &out, &errb))
	require.Contains(t, errb.String(), "unknown command")
	require.Equal(t, 0, run(context.Background(), []string{"version"}, &out, &errb))
	require.Contains(t, out.String(), "agentnet")
}
