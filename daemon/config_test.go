package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRendezvousServerForms: the three ways to give a node several servers
// of one rendezvous service (the comma list of --rendezvous, the
// config.json key as a string or a list, AGENTNET_RENDEZVOUS) give the same
// server list, in order; a bad entry is an error naming it.
func TestRendezvousServerForms(t *testing.T) {
	want := []string{"rdv1.example:7420", "10.0.0.2:7420", "[2001:db8::3]:7421"}
	list := "rdv1.example:7420, 10.0.0.2:7420,[2001:db8::3]:7421"

	var flag Config
	require.NoError(t, flag.Set("rendezvous", list))

	var env Config
	require.NoError(t, env.LoadEnv(func(k string) string {
		if k == "AGENTNET_RENDEZVOUS" {
			return list
		}
		return ""
	}))

	fromFile := func(content string) Config {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, ConfigName), []byte(content), 0o600))
		c := Config{StateDir: dir}
		require.NoError(t, c.LoadFile())
		return c
	}
	fileString := fromFile(`{"rendezvous": "` + list + `"}`)
	fileList := fromFile(`{"rendezvous": ["rdv1.example:7420", "10.0.0.2:7420", "[2001:db8::3]:7421"]}`)

	for name, c := range map[string]Config{"flag": flag, "env": env, "config string": fileString, "config list": fileList} {
		require.Equal(t, want, c.RendezvousAddrs(), name)
		c.StateDir = t.TempDir()
		require.NoError(t, c.validate(), name)
		// The node gets the first as its server and the others as the
		// rest of the service (Start: RendezvousAddr, RendezvousAddrs).
		require.Equal(t, "rdv1.example:443", c.rendezvousTCP(), name)
	}

	for in, msg := range map[string]string{
		"rdv1.example:7420,rdv2.example":       `daemon: rendezvous address "rdv2.example": address rdv2.example: missing port in address`,
		"rdv1.example:7420,rdv2.example:99999": `daemon: rendezvous address "rdv2.example:99999": port "99999" (want 1 to 65535)`,
		"rdv1.example:7420,rdv2.example:x":     `daemon: rendezvous address "rdv2.example:x": port "x" (want 1 to 65535)`,
		"rdv1.example:7420;rdv2.example:7420":  `daemon: rendezvous address "rdv1.example:7420;rdv2.example:7420": address rdv1.example:7420;rdv2.example:7420: too many colons in address`,
		" , ":                                  `daemon: rendezvous " , ": no address`,
	} {
		for _, set := range []func(c *Config) error{
			func(c *Config) error { return c.Set("rendezvous", in) },
			func(c *Config) error {
				return c.LoadEnv(func(k string) string { return map[string]string{"AGENTNET_RENDEZVOUS": in}[k] })
			},
		} {
			c := Config{StateDir: t.TempDir()}
			require.NoError(t, set(&c))
			require.EqualError(t, c.validate(), msg, in)
		}
	}
}
