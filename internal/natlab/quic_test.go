package natlab_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/internal/natlab"
)

// TestQUICThroughNAT runs quic-go in-process on sockets opened inside the
// lab: a client behind a double NAT keeps its connection to a public server
// through a conntrack flush and a NAT rebinding (the server follows the
// client's new public port).
func TestQUICThroughNAT(t *testing.T) {
	natlab.Require(t)
	t.Parallel()
	lab := natlab.New(t)
	srvHost := lab.AddPublicHost("srv")
	site := lab.AddSite("home", natlab.KindDouble)
	cliHost := site.AddHost("cli")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	srvConn, err := srvHost.ListenUDP(":4433")
	require.NoError(t, err)
	srvTr := &quic.Transport{Conn: srvConn}
	defer srvTr.Close()
	ln, err := srvTr.Listen(testTLSConfig(t), nil)
	require.NoError(t, err)
	defer ln.Close()
	remotes := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		remotes <- c.RemoteAddr()
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		_, _ = io.Copy(s, s)
	}()

	cliConn, err := cliHost.ListenUDP(":0")
	require.NoError(t, err)
	cliTr := &quic.Transport{Conn: cliConn}
	defer cliTr.Close()
	conn, err := cliTr.Dial(ctx, &net.UDPAddr{IP: srvHost.IP().AsSlice(), Port: 4433},
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"natlab-test"}}, nil)
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")
	require.Equal(t, site.PublicIP().String(), (<-remotes).(*net.UDPAddr).IP.String())

	s, err := conn.OpenStreamSync(ctx)
	require.NoError(t, err)
	echo := func(msg string) {
		t.Helper()
		require.NoError(t, s.SetDeadline(time.Now().Add(5*time.Second)))
		_, err := s.Write([]byte(msg))
		require.NoError(t, err)
		buf := make([]byte, len(msg))
		_, err = io.ReadFull(s, buf)
		require.NoError(t, err, "echo %q", msg)
		require.Equal(t, msg, string(buf))
	}
	echo("before")
	require.NoError(t, site.FlushConntrack())
	echo("after-flush")
	require.NoError(t, site.Rebind())
	echo("after-rebind")
}

func testTLSConfig(tb testing.TB) *tls.Config {
	tb.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(tb, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	require.NoError(tb, err)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		NextProtos:   []string{"natlab-test"},
	}
}
