package paths

import (
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/quic-go/quic-go"
)

// Kind says how a link reaches its peer.
type Kind uint8

const (
	KindDirect Kind = iota // over the node's own socket(s), possibly through punched NATs
	KindRelay              // through a rendezvous relay session
)

func (k Kind) String() string {
	if k == KindRelay {
		return "relay"
	}
	return "direct"
}

// Phase is a step of dialling a peer (see Manager.Link), and for a link
// the step that found it.
type Phase uint8

const (
	PhaseNone     Phase = iota
	PhaseIncoming       // the peer dialled us
	PhaseLastAddr       // the address the peer was last reached at
	PhaseLookup         // asking the rendezvous where the peer is
	PhaseDirect         // the locators the lookup reported
	PhasePunch          // an introduction: hole punching
	PhaseBirthday       // an introduction between a hard and an easy NAT
	PhaseRelay          // a relay session
)

var phaseNames = [...]string{"none", "incoming", "last-address", "lookup", "direct", "punch", "birthday", "relay"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return "unknown"
}

// Link is one live QUIC connection to an admitted peer. Its exported
// fields are set before the link is registered and never change.
type Link struct {
	Key      addressing.PublicKey
	Addr     addressing.Addr // the peer in network 0
	Conn     *quic.Conn
	Kind     Kind
	Outgoing bool          // we dialled it
	Found    Phase         // how the link was found
	Setup    time.Duration // from the start of the dial to the link; 0 if incoming
	Since    time.Time

	lastPong  atomic.Int64  // unix nanoseconds of the last heartbeat answer
	rxCount   atomic.Uint64 // PacketsReceived at the last quietFor
	rxAt      atomic.Int64  // unix nanoseconds: no packet heard since (see quietFor)
	rxCheckAt atomic.Int64  // unix nanoseconds of the last quietFor
	pokedAt   atomic.Int64  // unix nanoseconds of the last poke (stale.go)
	dgrams    atomic.Bool   // the host started its datagram loop (StartDatagrams)
	heardAt   atomic.Int64  // unix nanoseconds: the host last had data from the peer (MarkHeard); 0: at Since

	// Path liveness, touched only by the maintenance loop.
	recvCount    uint64    // PacketsReceived at the last check
	sentAtHeard  uint64    // PacketsSent when we last heard the peer
	lastHeard    time.Time // when PacketsReceived last grew
	sendingSince time.Time // first check that saw sends unanswered since lastHeard
	busy         bool      // the last check, or the one before it, heard at least busyPackets
	lastGot      uint64    // packets the last check that heard any heard
	repairAt     time.Time // the last re-punch (repair)

	repairSince atomic.Int64 // unix nanoseconds: a repair began (health.go); 0: none
}

// MarkHeard records that data from the peer arrived on one of the link's
// streams at now.
func (l *Link) MarkHeard(now time.Time) { l.heardAt.Store(now.UnixNano()) }

// HeardWithin reports whether the peer was heard from within d of now:
// the host had data from it on the link, or the link's handshake finished,
// that recently.
func (l *Link) HeardWithin(now time.Time, d time.Duration) bool {
	at := l.heardAt.Load()
	if at == 0 {
		at = l.Since.UnixNano()
	}
	return now.UnixNano()-at < int64(d)
}

// Alive reports whether the connection is still open.
func (l *Link) Alive() bool { return l.Conn.Context().Err() == nil }

// StartDatagrams reports whether this is the first call on l: the host
// starts its datagram loop for the link exactly once.
func (l *Link) StartDatagrams() bool { return l.dgrams.CompareAndSwap(false, true) }

// peer holds an admitted agent's links: at most one per kind. New streams
// and datagrams use the direct link when it is healthy, the relay link
// otherwise. Guarded by Manager.mu.
type peer struct {
	links        [2]*Link // indexed by Kind
	directFailed bool     // the direct link stopped answering heartbeats
	// spares are live links the peer dialled while another of its dials was
	// up: the peer's dialer keeps one and closes the others, so we keep
	// them all until it does (closing one ourselves could close the one it
	// kept). A spare takes over when the link of its kind ends.
	spares []*Link
}

// all returns the links and the spares.
func (p *peer) all() []*Link {
	out := append([]*Link(nil), p.spares...)
	for _, l := range p.links {
		if l != nil {
			out = append(out, l)
		}
	}
	return out
}

// best returns the link new traffic should use, or nil.
func (p *peer) best() *Link {
	d, r := p.links[KindDirect], p.links[KindRelay]
	switch {
	case d != nil && d.Alive() && (!p.directFailed || r == nil || !r.Alive()):
		return d
	case r != nil && r.Alive():
		return r
	}
	return nil
}

// direct returns the live direct link, or nil.
func (p *peer) direct() *Link {
	if d := p.links[KindDirect]; d != nil && d.Alive() {
		return d
	}
	return nil
}
