package certs

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
)

func TestCertificateCarriesKey(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	c, err := Certificate(priv)
	require.NoError(t, err)
	k, err := PeerKey(tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Leaf}})
	require.NoError(t, err)
	want, _ := addressing.PublicKeyFrom(pub)
	require.Equal(t, want, k)

	// A certificate over another kind of key carries no agent identity.
	bad, err := x509.ParseCertificate(c.Certificate[0])
	require.NoError(t, err)
	bad.PublicKey = "not a key"
	_, err = LeafKey(bad)
	require.ErrorIs(t, err, ErrNoPeerKey)

	_, err = PeerKey(tls.ConnectionState{})
	require.ErrorIs(t, err, ErrNoPeerKey)
}
