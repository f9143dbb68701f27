package quicnode

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/trustdb"
)

// TestStorePinsOnePerNode: the pin is one per node; a pin an earlier
// version kept for the configured address is adopted.
func TestStorePinsOnePerNode(t *testing.T) {
	st, err := trustdb.Open(t.TempDir())
	require.NoError(t, err)
	defer st.Close()
	k1, err := trustdb.GenerateIdentity()
	require.NoError(t, err)
	k2, err := trustdb.GenerateIdentity()
	require.NoError(t, err)

	pub1 := k1.PublicKey()
	require.NoError(t, st.SetMeta("rendezvous-pin:127.0.0.1:7420", pub1[:]))
	p := storePins{s: st, legacy: "rendezvous-pin:localhost:7420"}
	_, ok := p.Pin()
	require.False(t, ok, "a legacy pin of another address is not this configuration's")
	p = storePins{s: st, legacy: "rendezvous-pin:127.0.0.1:7420"}
	k, ok := p.Pin()
	require.True(t, ok)
	require.Equal(t, k1.PublicKey(), k)
	// Adopted: the same pin under any other address now.
	k, ok = storePins{s: st, legacy: "rendezvous-pin:localhost:7420"}.Pin()
	require.True(t, ok)
	require.Equal(t, k1.PublicKey(), k)

	require.NoError(t, p.SetPin(k2.PublicKey()))
	k, _ = storePins{s: st}.Pin()
	require.Equal(t, k2.PublicKey(), k)
}
