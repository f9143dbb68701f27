// Package paths owns every path from a node to its peers: the sockets and
// QUIC transports, the live links (one QUIC connection each), dialling,
// hole punching (including birthday punching), the relay, NAT checks,
// heartbeats, dead-path detection and upgrades. It is the Manager of the
// design's "paths are their own component"; package quicnode keeps
// identity, trust, virtual ports and streams, and talks to the Manager
// through a narrow interface in each direction:
//
//	quicnode.Node ──Link(ctx, key) / Best / ClosePeer / Forget / Links──► Manager
//	quicnode.Node ◄──Host: ClientTLS, ServerTLS, Admissible, ServeLink, SendControl── Manager
//	Manager ──Rendezvous: Lookup, Connect, STUNAddrs, Self, ReportNAT──► rendezvous.Client
//
// # Links
//
// A peer has at most one link of each Kind (direct, relay) plus spares:
// links the peer dialled while another of its dials was up (its dialer
// keeps one and closes the others, so we keep them all until it does). New
// traffic uses the direct link while heartbeats say it is healthy, the
// relay link otherwise. When both sides dial at once, the link dialled by
// the lower NodeID is kept. Every link records how it was found (the dial
// Phase, or PhaseIncoming) and how long the dial took.
//
// # Dialling
//
// Link dials a peer with no live link; concurrent callers share the dial.
// The dial runs the phases in order (see dialer): last address → lookup →
// direct (the locators) → punch (an introduction) → relay. A phase starts
// when the previous one failed or had TraverseDelay (the relay:
// relayAfter) to succeed; earlier attempts keep running, and the first
// link up wins. A repeat contact to a peer whose last address still works
// needs no rendezvous at all: the address is kept in memory and, through
// HintStore, on disk.
//
// # Health
//
// A maintenance loop (every second) sends heartbeats on direct links that
// have a relay link standing by (HeartbeatDead without an answer moves new
// traffic to the relay), re-binds relay sessions, re-punches relayed peers
// every upgradeEvery and re-checks the NAT every minute; every
// livenessPeriod it closes links that sent but heard nothing for PathDead
// (and re-dials the ones we had dialled), so a dead path fails streams in
// seconds instead of QUIC's idle timeout.
//
// # Repair: a peer that moved
//
// Before that, a direct link unanswered for RepairAfter is repaired in
// place (health.go): the peer's NAT may have rebound to a new port or
// address, or its host changed networks, and a NAT that filters by address
// and port needs a new punch, but the QUIC connection need not die. The
// repair checks our reflexive address (ours may be what changed) and asks
// the rendezvous for a fresh introduction (no relay), which reaches the
// peer on its session (the rendezvous's quic-go follows a client's new
// address, and it introduces agents at their session's live address); both
// sides then probe each other's current candidates in a punch session tied
// to the link (punchSession.repair: it never dials, and it ends when the link
// is heard again). A genuine probe from a new address of the peer, while the
// link is still silent, redirects the main socket's writes for the link's
// remote address to it (redirect.go): quic-go's client side sends to the
// address it dialled for ever (Conn.AddPath keeps the remote address), so
// this is the only way a dialler follows an acceptor that moved; an
// acceptor's quic-go follows a dialler that moved by itself (path
// validation) once our probes have opened our NAT to the new address. The
// receiving side of a busy link that falls silent both ways sends one
// heartbeat, so it is "sending unanswered" and repairs as soon as the
// sender. The redirect is a wrapper around the *net.UDPConn that overrides
// only the writes (one atomic load while nothing is redirected), so quic-go
// keeps GSO, ECN and batched reads through SyscallConn. The same wrapper
// retries without its IP_PKTINFO pin a write whose pinned source address or
// interface the host no longer has (quic-go pins an accepted connection's
// replies to where its packets arrived), and reports a write the host has
// no route, source address or device for (between two networks) as sent
// and lost: quic-go ends a connection at any send error but EMSGSIZE. A path that only stalled (nobody moved) is re-punched like
// a moved one, and its punch sessions end a probe round after the peer's
// probes come from the link's own address, so a false alarm costs a few
// probes and one introduction. A peer that restarted is
// noticed sooner (stale.go): every transport has a stateless reset key
// derived from the identity, a link reused after a short silence is first
// poked with a heartbeat large enough to draw the restarted peer's reset,
// and a peer dialling us anew while our winning link to it is silent gets
// that link closed instead of being refused as a duplicate.
//
// # Goroutines
//
// Everything the Manager starts runs in its goroutine group: the accept
// loop of each listener, the non-QUIC packet reader (STUN answers, punch
// probes), the maintenance loop, one ServeLink per link (the host's stream
// loop), every dial attempt and per-candidate handshake, every punch loop
// and birthday attempt, hint saves. Go on a closed group is refused, so
// nothing starts after Close; Close closes every link, listener, transport
// and socket, then waits for the group.
//
// # Seams
//
// Config.Conn (and RelayConn, ListenUDP) are net.PacketConn: production
// passes the real *net.UDPConn, which keeps quic-go's fast path (GSO,
// batched reads); tests run managers on an in-memory network (quic-go's
// testutils/simnet) inside testing/synctest, so the timer logic is tested
// on a fake clock without sleeps or root.
package paths
