// Package certs turns agentnet identity keys into the self-signed TLS
// certificates every QUIC handshake carries, and reads the peer's key back
// out of a handshake. Peers pin keys, never a CA: the certificate is only a
// container for the Ed25519 public key.
package certs

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// ErrNoPeerKey is returned when a handshake carried no Ed25519 certificate.
var ErrNoPeerKey = errors.New("certs: peer presented no Ed25519 certificate")

// Certificate returns a self-signed certificate over priv's public key, valid
// from an hour ago for 100 years (validity is not checked by agentnet peers).
func Certificate(priv ed25519.PrivateKey) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(100, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, nil
}

// PeerKey returns the Ed25519 key of the peer's leaf certificate. The TLS
// 1.3 handshake has already proved the peer holds the matching private key
// (CertificateVerify), so the certificate's own signature adds nothing and
// is not checked: that saves an Ed25519 verification per handshake.
func PeerKey(cs tls.ConnectionState) (addressing.PublicKey, error) {
	if len(cs.PeerCertificates) == 0 {
		return addressing.PublicKey{}, ErrNoPeerKey
	}
	return LeafKey(cs.PeerCertificates[0])
}

// LeafKey returns the Ed25519 key a certificate carries.
func LeafKey(cert *x509.Certificate) (addressing.PublicKey, error) {
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return addressing.PublicKey{}, ErrNoPeerKey
	}
	k, ok := addressing.PublicKeyFrom(pub)
	if !ok {
		return addressing.PublicKey{}, ErrNoPeerKey
	}
	return k, nil
}

// CurvePreferences keeps the ClientHello within one Initial packet (Go's
// default hybrid post-quantum share spans two), which helps hole punching.
var CurvePreferences = []tls.CurveID{tls.X25519}

// ServerConfig returns a TLS config for a QUIC listener that requires a
// client certificate and admits only peers for which allow returns nil.
// Session tickets are disabled: a resumed session would skip certificate
// checks. allow runs in VerifyConnection, which runs on every handshake.
func ServerConfig(cert tls.Certificate, alpn string, allow func(addressing.PublicKey) error) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		NextProtos:             []string{alpn},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       CurvePreferences,
		VerifyConnection: func(cs tls.ConnectionState) error {
			k, err := PeerKey(cs)
			if err != nil {
				return err
			}
			return allow(k)
		},
	}
}

// ClientConfig returns a TLS config for dialing a peer whose key must be
// want (pinned). If want is zero, any key is accepted and check (if not nil)
// decides; check also runs when want is set.
func ClientConfig(cert tls.Certificate, alpn string, want addressing.PublicKey, check func(addressing.PublicKey) error) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		NextProtos:             []string{alpn},
		InsecureSkipVerify:     true, // we pin the key in VerifyConnection instead of using a CA
		SessionTicketsDisabled: true,
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       CurvePreferences,
		ServerName:             "agentnet",
		VerifyConnection: func(cs tls.ConnectionState) error {
			k, err := PeerKey(cs)
			if err != nil {
				return err
			}
			if !want.IsZero() && k != want {
				return fmt.Errorf("certs: peer key %s, want %s", k, want)
			}
			if check != nil {
				return check(k)
			}
			return nil
		},
	}
}
