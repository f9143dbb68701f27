package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/agentnet/agentnet/rendezvous"
)

// testPKI writes a CA and, signed by it, a server certificate for
// 127.0.0.1 and a client certificate, as PEM files in dir.
type testPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return p
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agentnet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		require.NoError(t, err)
		kder, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf("etcd", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("rendezvous", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startSecureEtcd starts a one-member etcd that serves clients only over
// TLS with client certificates from pki's CA, with auth enabled (user root,
// password pw). It returns the client host:port.
func startSecureEtcd(t *testing.T, pki testPKI, pw string) string {
	t.Helper()
	clientPort, peerPort := freeTCPPort(t), freeTCPPort(t)
	cfg := embed.NewConfig()
	cfg.Name = "m0"
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	client := url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = "m0=" + peer.String()
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: pki.serverCert, KeyFile: pki.serverKey, TrustedCAFile: pki.ca, ClientCertAuth: true}
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	require.NoError(t, err)
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("etcd not ready")
	}

	tc, err := (&transport.TLSInfo{CertFile: pki.clientCert, KeyFile: pki.clientKey, TrustedCAFile: pki.ca}).ClientConfig()
	require.NoError(t, err)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client.String()}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = cli.UserAdd(ctx, "root", pw)
	require.NoError(t, err)
	_, err = cli.UserGrantRole(ctx, "root", "root")
	require.NoError(t, err)
	_, err = cli.AuthEnable(ctx)
	require.NoError(t, err)
	return client.Host
}

// TestEtcdTLSAndAuth: the rendezvous's etcd options (-etcd-ca, -etcd-cert,
// -etcd-key, -etcd-user, -etcd-password-file) reach etcd: an EtcdStore
// built from them connects to an etcd that requires TLS with client
// certificates and auth, and each wrong or missing one fails with an error
// that says what failed (before the fix the TLS failures were a bare
// "context deadline exceeded").
func TestEtcdTLSAndAuth(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	hostPort := startSecureEtcd(t, pki, "s3cret")
	pwFile := func(pw string) string {
		p := filepath.Join(t.TempDir(), "password")
		require.NoError(t, os.WriteFile(p, []byte(pw+"\n"), 0o600))
		return p
	}
	good := rendezvousFlags{
		store: "etcd://" + hostPort, etcdCA: pki.ca, etcdCert: pki.clientCert, etcdKey: pki.clientKey,
		etcdUser: "root", etcdPasswordFile: pwFile("s3cret"), etcdTimeout: 3 * time.Second,
	}
	open := func(f rendezvousFlags) error {
		cfg, err := etcdConfig(&f, nil)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := rendezvous.OpenEtcdStore(ctx, cfg)
		if err == nil {
			st.Close()
		}
		return err
	}

	require.NoError(t, open(good), "the right options")

	for name, tc := range map[string]struct {
		change func(f *rendezvousFlags)
		want   string
	}{
		"wrong password":        {func(f *rendezvousFlags) { f.etcdPasswordFile = pwFile("wrong") }, "etcdserver: authentication failed, invalid user ID or password"},
		"no user":               {func(f *rendezvousFlags) { f.etcdUser, f.etcdPasswordFile = "", "" }, "permission denied (etcd has auth enabled, and no user is configured)"},
		"no CA":                 {func(f *rendezvousFlags) { f.etcdCA = "" }, "context deadline exceeded (TLS to " + hostPort + ": tls: failed to verify certificate: x509: certificate signed by unknown authority)"},
		"no client cert":        {func(f *rendezvousFlags) { f.etcdCert, f.etcdKey = "", "" }, "TLS to " + hostPort + ": remote error: tls: certificate required"},
		"no TLS":                {func(f *rendezvousFlags) { f.etcdCA, f.etcdCert, f.etcdKey = "", "", "" }, hostPort + " serves TLS, and no TLS is configured"},
		"cert without key":      {func(f *rendezvousFlags) { f.etcdKey = "" }, "-etcd-cert and -etcd-key go together"},
		"password without user": {func(f *rendezvousFlags) { f.etcdUser = "" }, "-etcd-password-file needs -etcd-user"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := good
			tc.change(&f)
			start := time.Now()
			err := open(f)
			require.Error(t, err)
			t.Logf("%v (after %v)", err, time.Since(start).Round(time.Millisecond))
			require.ErrorContains(t, err, tc.want)
		})
	}
}
