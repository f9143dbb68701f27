package main

import (
	"context"
	"io"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// go-libp2p as its users run it, minus what would add work unrelated to the
// transport: no relay, no metrics, no resource limits (100 peers at once
// must not be throttled), no black-hole detection (loopback), no ping
// service. QUIC: its own TLS and streams; TCP: TLS 1.3 and yamux.

type libp2pSystem struct {
	kind string // "quic" or "tcp"
	srv  host.Host
}

func libp2pOptions(kind string) []libp2p.Option {
	opts := []libp2p.Option{
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.UDPBlackHoleSuccessCounter(nil),
		libp2p.IPv6BlackHoleSuccessCounter(nil),
		libp2p.Ping(false),
	}
	if kind == "quic" {
		return append(opts, libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	}
	return append(opts, libp2p.Transport(tcp.NewTCPTransport), libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
}

func startLibp2p(_ context.Context, kind string) (system, error) {
	h, err := libp2p.New(libp2pOptions(kind)...)
	if err != nil {
		return nil, err
	}
	for _, p := range []string{protoRPC, protoEcho, protoSink} {
		h.SetStreamHandler(protocol.ID(p), func(s network.Stream) { serve(p, s) })
	}
	return &libp2pSystem{kind: kind, srv: h}, nil
}

func (s *libp2pSystem) name() string { return "libp2p-" + s.kind }
func (s *libp2pSystem) close() error { return s.srv.Close() }

func (s *libp2pSystem) newClient(context.Context) (client, error) {
	h, err := libp2p.New(libp2pOptions(s.kind)...)
	if err != nil {
		return nil, err
	}
	return &libp2pClient{h: h, srv: peer.AddrInfo{ID: s.srv.ID(), Addrs: s.srv.Addrs()}}, nil
}

type libp2pClient struct {
	h   host.Host
	srv peer.AddrInfo
}

func (c *libp2pClient) connect(ctx context.Context) error { return c.h.Connect(ctx, c.srv) }

func (c *libp2pClient) stream(ctx context.Context, proto string) (io.ReadWriteCloser, error) {
	return c.h.NewStream(ctx, c.srv.ID, protocol.ID(proto))
}

func (c *libp2pClient) close() error { return c.h.Close() }
