package rendezvous

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/agentnet/agentnet/internal/relayframe"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/rendezvous/relay"
	"github.com/agentnet/agentnet/trustdb"
)

// ALPN is the TLS application protocol of the rendezvous.
const ALPN = "agentnet-rendezvous/1"

// ServerConfig configures a Server. The zero value serves on an ephemeral
// port with a fresh identity and a temporary store.
type ServerConfig struct {
	// Identity is the server's key, which clients pin. If nil, it is loaded
	// from (or created in) DataDir/identity.key, so it survives restarts; with
	// no DataDir a fresh one is generated.
	Identity *trustdb.Identity
	// Addr is the UDP address to listen on ("host:port") when Conn is nil;
	// "" means ":0".
	Addr string
	// Conn, if set, is the socket to serve on. The caller keeps ownership:
	// Close stops using it but does not close it.
	Conn *net.UDPConn
	// STUNConn, if set, is the socket of the second STUN address (clients
	// compare the mappings seen from both to classify their NAT). The
	// caller keeps ownership.
	STUNConn *net.UDPConn
	// STUNAddr is the second STUN address ("host:port") when STUNConn is
	// nil. "" means the main socket's IP and port + 1 (if that port is
	// taken, any free port on that IP, with a warning; clients learn the
	// port at registration); "-" means none.
	STUNAddr string
	// RelayConn, if set, is the relay's socket. The caller keeps ownership.
	RelayConn *net.UDPConn
	// RelayAddr is the relay's address when RelayConn is nil, like
	// STUNAddr: "" means the main port + 2, "-" means no relay.
	//
	// The STUN and relay sockets answer from their bound address: on a host
	// with several addresses, bind them (and Addr) to the public IP rather
	// than to a wildcard, or answers may leave from another IP than the one
	// the client sent to (the main socket is not affected: quic-go picks the
	// source address per packet).
	RelayAddr string
	// TCP turns on the TCP (TLS + WebSocket) listener for agents that
	// cannot send UDP; off by default (see TCPConfig).
	TCP TCPConfig
	// DataDir holds the identity and the state (DataDir/rendezvous.db,
	// bbolt, checked for damage when opened; a clean Close leaves its last
	// good copy in DataDir/rendezvous.db.last-good). "" keeps state in a
	// temporary file deleted on Close (tests).
	DataDir string
	// Store, if set, replaces the bbolt file in DataDir. The caller keeps
	// ownership: Close does not close it.
	Store Store
	// InitStore allows Start to begin with a missing or empty store although
	// the server's identity (DataDir/identity.key) already exists: the
	// operator's deliberate fresh start, or the first start of an existing
	// server on a new Store. Without it Start refuses, with an error
	// wrapping ErrStoreMismatch, so a lost store is never silently replaced
	// by an empty one.
	InitStore bool
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Limits bounds what clients can make the server do.
	Limits Limits
}

// Limits bounds the server's work and memory per client. A zero field takes
// its default.
type Limits struct {
	// MaxFrameSize is the largest request frame body accepted, in bytes
	// (default and maximum proto.MaxBody).
	MaxFrameSize int
	// KeyRate and KeyBurst are the token bucket of requests per second per
	// agent key (default 20/s, burst 40). A request is one stream:
	// Register, Lookup, SetHostname, TrustSend.
	KeyRate  float64
	KeyBurst int
	// AddrRate and AddrBurst are the token bucket of requests per second per
	// source address (IPv6: per /64), shared fairly by the keys that use
	// the address (each of the n keys seen in the last 10 s gets 1/n, so a
	// key that floods does not starve a co-located one; the address as a
	// whole gets at most twice the rate), and, separately, of new
	// connections per source address (default 100/s, burst 200).
	AddrRate  float64
	AddrBurst int
	// RateTableSize bounds the number of keys and addresses whose buckets
	// are remembered (least recently used evicted; default 65536 each).
	RateTableSize int
	// MaxPendingPerTarget is the number of unanswered trust requests an agent
	// (or a name no agent holds yet) can have waiting (default 64). When they
	// are full, a request from a source prefix that holds at least two
	// fewer takes the slot of the oldest request of the prefix that holds
	// the most, and a fellow network member's takes a stranger's (see
	// pending.go); others are dropped (counted), so while every prefix
	// holds one slot a new prefix's request is. The requester gets the
	// same answer as ever.
	MaxPendingPerTarget int
	// MaxPendingPerKey, MaxPendingPerPrefix and MaxPendingTotal bound the
	// unanswered requests one requester key may have (default 256), one
	// source prefix (IPv4 /24, IPv6 /48; default 4096), and the server
	// (default 1<<22). Requests over them are dropped (counted) with the
	// usual answer.
	MaxPendingPerKey    int
	MaxPendingPerPrefix int
	MaxPendingTotal     int
	// MaxMailbox is the number of undelivered messages kept per agent
	// (default 256).
	MaxMailbox int
	// MaxStreamsPerConn is the number of concurrent request streams per
	// connection (QUIC MaxIncomingStreams; default 16).
	MaxStreamsPerConn int
	// MaxConns is the number of concurrent client connections (default
	// 10000). When it is reached, a new connection from a source prefix
	// (IPv4 /24, IPv6 /48) holding at least two fewer than the prefix that
	// holds the most takes the place of that prefix's newest connection;
	// others are refused. So one source can use all of it while nobody else
	// needs it, and never keep anyone else out.
	MaxConns int
	// MaxConnsPerKey is the number of concurrent connections one key may
	// have (default 4); more are closed at once.
	MaxConnsPerKey int
	// MaxAgents is the number of registrations kept (default 1<<20); a new
	// key over it is refused with proto.CodeLimit.
	MaxAgents int
	// MaxAgentsPerPrefix is the number of registrations kept for keys that
	// first registered from one source prefix (IPv4 /24, IPv6 /48; default
	// MaxAgents/64, at least 1024 or MaxAgents), so one source cannot fill
	// MaxAgents; a new key over it is refused with proto.CodeLimit.
	MaxAgentsPerPrefix int
	// AgentTTL is how long a registration is kept while its agent is offline
	// (default 90 days; online agents are kept): then its record goes and
	// its hostname is free again. The address stays the agent's (it is its
	// key's), and its trust pairs stay, so it simply registers again.
	AgentTTL time.Duration
	// RelayRate and RelayBurst are each relay session's token bucket of
	// bytes, both directions together (default 8 MiB/s, burst 1 MiB; the
	// burst must hold one frame, 1452 bytes).
	RelayRate  int
	RelayBurst int
	// RelayPacketRate is each relay session's packets per second, both
	// directions together (default RelayRate/512, at least 1024: 16384 for
	// the default rate, so that the byte rate, not this, limits bulk QUIC
	// traffic; burst an eighth of a second's worth).
	RelayPacketRate int
	// MaxRelaySessions bounds the relay sessions (default 10000). Over it,
	// introductions carry no relay grant.
	MaxRelaySessions int
	// MaxRelayPerKey is the number of relay sessions one agent may be a side
	// of (default MaxRelaySessions/64, at least 8): over it, its
	// introductions carry no relay grant, so a few keys cannot fill
	// MaxRelaySessions.
	MaxRelayPerKey int
	// RelayIdle is how long a relay session lives without an accepted Bind
	// or forwarded Data (default 120 s).
	RelayIdle time.Duration
	// MaxNetworksPerAgent is the number of networks an agent may own or be
	// a member of (default 64).
	MaxNetworksPerAgent int
	// MaxNetworkMembers is the number of members a network may have besides
	// its owner (default 1024); as many former members' Leave or Remove
	// documents are kept, the oldest dropped first.
	MaxNetworkMembers int
}

// Defaults of Limits.
const (
	DefaultKeyRate             = 20
	DefaultKeyBurst            = 40
	DefaultAddrRate            = 100
	DefaultAddrBurst           = 200
	DefaultRateTableSize       = 1 << 16
	DefaultMaxPendingPerTarget = 64
	DefaultMaxPendingPerKey    = 256
	DefaultMaxPendingPerPrefix = 4096
	DefaultMaxPendingTotal     = 1 << 22
	DefaultMaxMailbox          = 256
	DefaultMaxStreamsPerConn   = 16
	DefaultMaxConns            = 10000
	DefaultMaxConnsPerKey      = 4
	DefaultMaxAgents           = 1 << 20
	DefaultAgentTTL            = 90 * 24 * time.Hour
	DefaultRelayRate           = relay.DefaultRate
	DefaultRelayBurst          = relay.DefaultBurst
	DefaultMaxRelaySessions    = relay.DefaultMaxSessions
	DefaultRelayIdle           = relay.DefaultIdle
	DefaultMaxNetworksPerAgent = 64
	DefaultMaxNetworkMembers   = 1024
)

func (l Limits) withDefaults() Limits {
	if l.MaxFrameSize == 0 {
		l.MaxFrameSize = proto.MaxBody
	}
	if l.KeyRate == 0 {
		l.KeyRate = DefaultKeyRate
	}
	if l.KeyBurst == 0 {
		l.KeyBurst = DefaultKeyBurst
	}
	if l.AddrRate == 0 {
		l.AddrRate = DefaultAddrRate
	}
	if l.AddrBurst == 0 {
		l.AddrBurst = DefaultAddrBurst
	}
	if l.RateTableSize == 0 {
		l.RateTableSize = DefaultRateTableSize
	}
	if l.MaxPendingPerTarget == 0 {
		l.MaxPendingPerTarget = DefaultMaxPendingPerTarget
	}
	if l.MaxPendingPerKey == 0 {
		l.MaxPendingPerKey = DefaultMaxPendingPerKey
	}
	if l.MaxPendingPerPrefix == 0 {
		l.MaxPendingPerPrefix = DefaultMaxPendingPerPrefix
	}
	if l.MaxPendingTotal == 0 {
		l.MaxPendingTotal = DefaultMaxPendingTotal
	}
	if l.MaxMailbox == 0 {
		l.MaxMailbox = DefaultMaxMailbox
	}
	if l.MaxStreamsPerConn == 0 {
		l.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if l.MaxConns == 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.MaxConnsPerKey == 0 {
		l.MaxConnsPerKey = DefaultMaxConnsPerKey
	}
	if l.MaxAgents == 0 {
		l.MaxAgents = DefaultMaxAgents
	}
	if l.MaxAgentsPerPrefix == 0 {
		l.MaxAgentsPerPrefix = max(l.MaxAgents/64, min(l.MaxAgents, 1024))
	}
	if l.AgentTTL == 0 {
		l.AgentTTL = DefaultAgentTTL
	}
	if l.RelayRate == 0 {
		l.RelayRate = DefaultRelayRate
	}
	if l.RelayBurst == 0 {
		l.RelayBurst = DefaultRelayBurst
	}
	if l.RelayPacketRate == 0 {
		l.RelayPacketRate = relay.DefaultPacketRate(l.RelayRate)
	}
	if l.MaxRelaySessions == 0 {
		l.MaxRelaySessions = DefaultMaxRelaySessions
	}
	if l.MaxRelayPerKey == 0 {
		l.MaxRelayPerKey = max(8, l.MaxRelaySessions/64)
	}
	if l.RelayIdle == 0 {
		l.RelayIdle = DefaultRelayIdle
	}
	if l.MaxNetworksPerAgent == 0 {
		l.MaxNetworksPerAgent = DefaultMaxNetworksPerAgent
	}
	if l.MaxNetworkMembers == 0 {
		l.MaxNetworkMembers = DefaultMaxNetworkMembers
	}
	return l
}

func (l Limits) validate() error {
	switch {
	case l.MaxFrameSize < 0 || l.MaxFrameSize > proto.MaxBody:
		return fmt.Errorf("rendezvous: Limits.MaxFrameSize %d: want 0-%d", l.MaxFrameSize, proto.MaxBody)
	case l.KeyRate < 0 || l.KeyBurst < 0 || l.AddrRate < 0 || l.AddrBurst < 0:
		return errors.New("rendezvous: Limits: rates and bursts must not be negative")
	case l.RateTableSize < 0 || l.MaxPendingPerTarget < 0 || l.MaxMailbox < 0 ||
		l.MaxPendingPerKey < 0 || l.MaxPendingPerPrefix < 0 || l.MaxPendingTotal < 0 ||
		l.MaxAgentsPerPrefix < 0 || l.AgentTTL < 0 || l.MaxConnsPerKey < 0 ||
		l.MaxStreamsPerConn < 0 || l.MaxConns < 0 || l.MaxAgents < 0 ||
		l.MaxNetworksPerAgent < 0 || l.MaxNetworkMembers < 0:
		return errors.New("rendezvous: Limits: sizes must not be negative")
	case l.RelayRate < 0 || l.RelayBurst < 0 || l.RelayPacketRate < 0 || l.MaxRelaySessions < 0 || l.RelayIdle < 0 ||
		l.MaxRelayPerKey < 0:
		return errors.New("rendezvous: Limits: relay limits must not be negative")
	case l.RelayBurst != 0 && l.RelayBurst < relayframe.MaxFrameSize:
		return fmt.Errorf("rendezvous: Limits.RelayBurst %d: below one relay frame (%d bytes)", l.RelayBurst, relayframe.MaxFrameSize)
	}
	return nil
}
