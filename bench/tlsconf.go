package bench

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/agentnet/agentnet/addressing"
)

// The baselines' TLS configurations mirror internal/certs (ServerConfig,
// ClientConfig): TLS 1.3 only, X25519 only, client certificate required,
// the peer's Ed25519 key taken from its self-signed leaf (signature checked)
// in VerifyConnection, no session tickets. They are restated here so that
// the baselines do the same work whatever the state of internal/certs.

var errNoKey = errors.New("bench: peer presented no Ed25519 certificate")

// leafKey returns the Ed25519 key of a self-signed leaf, after checking its
// signature with that key.
func leafKey(cs tls.ConnectionState) (addressing.PublicKey, error) {
	if len(cs.PeerCertificates) == 0 {
		return addressing.PublicKey{}, errNoKey
	}
	c := cs.PeerCertificates[0]
	pub, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok {
		return addressing.PublicKey{}, errNoKey
	}
	if c.SignatureAlgorithm != x509.PureEd25519 || !ed25519.Verify(pub, c.RawTBSCertificate, c.Signature) {
		return addressing.PublicKey{}, errors.New("bench: certificate not self-signed")
	}
	k, ok := addressing.PublicKeyFrom(pub)
	if !ok {
		return addressing.PublicKey{}, errNoKey
	}
	return k, nil
}

func serverTLS(cert tls.Certificate, alpn string, allow func(addressing.PublicKey) error) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		NextProtos:             []string{alpn},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		VerifyConnection: func(cs tls.ConnectionState) error {
			k, err := leafKey(cs)
			if err != nil {
				return err
			}
			return allow(k)
		},
	}
}

// clientTLS pins want; a zero want accepts any key.
func clientTLS(cert tls.Certificate, alpn string, want addressing.PublicKey) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		NextProtos:             []string{alpn},
		InsecureSkipVerify:     true, // the key is pinned in VerifyConnection
		SessionTicketsDisabled: true,
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		ServerName:             "agentnet",
		VerifyConnection: func(cs tls.ConnectionState) error {
			k, err := leafKey(cs)
			if err != nil {
				return err
			}
			if !want.IsZero() && k != want {
				return fmt.Errorf("bench: peer key %s, want %s", k, want)
			}
			return nil
		},
	}
}
