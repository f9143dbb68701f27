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

	// A certificate whose signature does not verify under its own key is refused.
	bad, err := x509.ParseCertificate(c.Certificate[0])
	require.NoError(t, err)
	bad.Signature = append([]byte(nil), bad.Signature...)
	bad.Signature[0] ^= 1
	_, err = LeafKey(bad)
	require.Error(t, err)

	_, err = PeerKey(tls.ConnectionState{})
	require.ErrorIs(t, err, ErrNoPeerKey)
}
