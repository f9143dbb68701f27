package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// The raw quic-go baseline: the quic.Config of agentnet's bench (which is
// quicnode's), TLS 1.3 with self-signed certificates on both sides, one
// socket and transport per peer. A stream names its handler in its first
// byte, sent with the first write.

var quicProtos = map[string]byte{protoRPC: 1, protoEcho: 2, protoSink: 3}

func quicConfig() *quic.Config {
	return &quic.Config{
		EnableDatagrams:       true,
		MaxIncomingStreams:    4096,
		MaxIncomingUniStreams: 16,
		KeepAlivePeriod:       15 * time.Second,
		MaxIdleTimeout:        30 * time.Second,
		HandshakeIdleTimeout:  10 * time.Second,
	}
}

func selfSigned() (tls.Certificate, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}, nil
}

type quicSystem struct {
	ln   *quic.Listener
	tr   *quic.Transport
	cert tls.Certificate
	wg   sync.WaitGroup
}

func startQUIC(ctx context.Context) (system, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"bench"},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13}, quicConfig())
	if err != nil {
		pc.Close()
		return nil, err
	}
	s := &quicSystem{ln: ln, tr: tr, cert: cert}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				for {
					st, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					s.wg.Add(1)
					go func() {
						defer s.wg.Done()
						var b [1]byte
						if _, err := io.ReadFull(st, b[:]); err != nil {
							st.CancelRead(1)
							st.Close()
							return
						}
						for name, id := range quicProtos {
							if id == b[0] {
								serve(name, st)
								return
							}
						}
						st.CancelRead(1)
						st.Close()
					}()
				}
			}()
		}
	}()
	return s, nil
}

func (s *quicSystem) name() string { return "quic-go" }

func (s *quicSystem) close() error {
	s.ln.Close()
	err := s.tr.Close()
	s.tr.Conn.Close()
	s.wg.Wait()
	return err
}

func (s *quicSystem) newClient(context.Context) (client, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	return &quicClient{sys: s, tr: &quic.Transport{Conn: pc}}, nil
}

type quicClient struct {
	sys  *quicSystem
	tr   *quic.Transport
	conn *quic.Conn
}

func (c *quicClient) connect(ctx context.Context) error {
	if c.conn != nil {
		return nil
	}
	conf := &tls.Config{Certificates: []tls.Certificate{c.sys.cert}, NextProtos: []string{"bench"},
		InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} // the self-signed peer: pinning is not measured here
	qc, err := c.tr.Dial(ctx, c.sys.tr.Conn.LocalAddr(), conf, quicConfig())
	if err != nil {
		return err
	}
	c.conn = qc
	return nil
}

func (c *quicClient) stream(ctx context.Context, proto string) (io.ReadWriteCloser, error) {
	if c.conn == nil {
		return nil, errors.New("not connected")
	}
	id, ok := quicProtos[proto]
	if !ok {
		return nil, fmt.Errorf("no protocol %q", proto)
	}
	st, err := c.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{Stream: st, id: id}, nil
}

func (c *quicClient) close() error {
	if c.conn != nil {
		c.conn.CloseWithError(0, "")
	}
	err := c.tr.Close()
	c.tr.Conn.Close()
	return err
}

// quicStream sends its protocol byte with the first write.
type quicStream struct {
	*quic.Stream
	id   byte
	sent bool
}

func (s *quicStream) Write(b []byte) (int, error) {
	if s.sent {
		return s.Stream.Write(b)
	}
	s.sent = true
	buf := make([]byte, 1+len(b))
	buf[0] = s.id
	copy(buf[1:], b)
	n, err := s.Stream.Write(buf)
	if n > 0 {
		n--
	}
	return n, err
}

// CloseWrite closes the write side (quic-go's Close), sending the protocol
// byte first if nothing was written.
func (s *quicStream) CloseWrite() error {
	if !s.sent {
		s.Write(nil)
	}
	return s.Stream.Close()
}

// Close closes the write side if it is open; once the answer was read to
// its end, the stream is done both ways.
func (s *quicStream) Close() error {
	if !s.sent {
		s.Write(nil)
	}
	s.Stream.Close()
	return nil
}
