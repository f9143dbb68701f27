// Package service names the built-in services an agentnet daemon runs on
// well-known virtual ports. Each service is a sub-package with its own wire
// codec, a server that takes a net.Listener (a quicnode listener in the
// daemon, a TCP listener in tests) and client functions that take a
// net.Conn:
//
//	port 7     echo      streams and datagrams sent back (built into quicnode)
//	port 9     discard   a stream is read to its end; the byte count is answered (daemon)
//	port 1001  message   typed messages and files into the receiver's inbox (service/message)
//	port 1002  event     publish/subscribe with topic patterns (service/event)
//
// Log keys: peer, remote, id, kind, bytes, status, err.
//
// Services never import quicnode: the trust gate has admitted every peer
// before a stream reaches them, and the stream's RemoteAddr
// (addressing.SockAddr) names the sender.
package service

// Well-known virtual ports.
const (
	PortEcho     uint16 = 7
	PortDiscard  uint16 = 9
	PortMessages uint16 = 1001
	PortEvents   uint16 = 1002
)
