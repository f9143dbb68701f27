package quicnode

import (
	"crypto/ed25519"
	"testing"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
)

func TestKnockPairSecretAgrees(t *testing.T) {
	for i := 0; i < 20; i++ {
		pa, sa, _ := ed25519.GenerateKey(nil)
		pb, sb, _ := ed25519.GenerateKey(nil)
		ka, _ := addressing.PublicKeyFrom(pa)
		kb, _ := addressing.PublicKeyFrom(pb)
		a, err := newKnocker(ka, sa)
		require.NoError(t, err)
		b, err := newKnocker(kb, sb)
		require.NoError(t, err)
		na, err := a.name(kb)
		require.NoError(t, err)
		nb, err := b.name(ka)
		require.NoError(t, err)
		require.Equal(t, na, nb, "both sides derive the same knock")

		b.rebuild([]addressing.PublicKey{ka})
		got, ok := b.lookup(na)
		require.True(t, ok)
		require.Equal(t, ka, got)

		// A third key cannot produce the pair's knock.
		pc, sc, _ := ed25519.GenerateKey(nil)
		kc, _ := addressing.PublicKeyFrom(pc)
		c, _ := newKnocker(kc, sc)
		nc, _ := c.name(kb)
		_, ok = b.lookup(nc)
		require.False(t, ok)
		b.rebuild(nil)
		_, ok = b.lookup(na)
		require.False(t, ok, "revoked peers drop out of the table")
	}
}
