package natlab_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/internal/natlab"
)

// TestTeardown checks that a lab kills what runs inside it and deletes its
// namespaces, and that New removes what a killed test binary left behind.
func TestTeardown(t *testing.T) {
	natlab.Require(t)
	t.Parallel()

	var sleep *exec.Cmd
	var names []string
	t.Run("lab", func(t *testing.T) {
		lab := natlab.New(t)
		h := lab.AddSite("s", natlab.KindHome).AddHost("h")
		names = []string{lab.Internet().Namespace(), h.Namespace()}
		sleep = h.Command(context.Background(), "sleep", "60")
		require.NoError(t, sleep.Start())
	})
	waitExit(t, sleep)
	for _, n := range names {
		require.NoFileExists(t, filepath.Join("/run/netns", n))
	}

	// A stale lab: a claim whose owner is dead, a namespace and a process in it.
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	id := "t" + nonce()[:3] // not hex: cannot clash with a real lab id
	claim := filepath.Join("/run/natlab", id)
	ns := "nl" + id + "-x"
	require.NoError(t, os.MkdirAll("/run/natlab", 0o755))
	require.NoError(t, os.WriteFile(claim, []byte(strconv.Itoa(dead.Process.Pid)+"\n"), 0o644))
	out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		_ = os.Remove(claim)
	})
	stale := exec.Command("ip", "netns", "exec", ns, "sleep", "60")
	require.NoError(t, stale.Start())
	// Wait until "ip netns exec" has joined the namespace.
	self, err := os.Readlink("/proc/self/ns/net")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		l, err := os.Readlink("/proc/" + strconv.Itoa(stale.Process.Pid) + "/ns/net")
		return err == nil && l != self
	}, 5*time.Second, 5*time.Millisecond)

	natlab.New(t)
	waitExit(t, stale)
	require.NoFileExists(t, filepath.Join("/run/netns", ns))
	require.NoFileExists(t, claim)
}

func waitExit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.Error(t, err, "killed, not exited by itself")
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("process in the lab survived its teardown")
	}
}
