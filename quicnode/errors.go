package quicnode

import (
	"errors"

	"github.com/agentnet/agentnet/quicnode/internal/paths"
	"github.com/quic-go/quic-go"
)

var (
	// ErrNotTrusted is returned when the peer is not trusted by us, or does
	// not trust us (its handshake gate refused us, or it revoked us). Streams
	// cut by a revocation fail with an error that wraps it too.
	ErrNotTrusted = paths.ErrNotTrusted
	// ErrPortClosed is returned by Dial when nothing listens on the virtual port.
	ErrPortClosed = paths.ErrPortClosed
	// ErrPortInUse is returned by Listen and ListenPacket for a taken port.
	ErrPortInUse = errors.New("virtual port in use")
	// ErrDatagramTooLarge is returned by WriteTo for payloads over MaxDatagramPayload.
	ErrDatagramTooLarge = errors.New("datagram too large")
	// ErrUnreachable is returned when a trusted peer has no usable locator
	// (offline, or no candidate answered).
	ErrUnreachable = paths.ErrUnreachable
	// ErrBusy is returned by Dial when the peer's listener backlog is full.
	ErrBusy = paths.ErrBusy
)

// Application error codes on peer connections.
const (
	CodeClosing    = paths.CodeClosing    // the node is shutting down
	CodeRevoked    = paths.CodeRevoked    // trust was revoked
	CodeDuplicate  = paths.CodeDuplicate  // a simultaneous dial lost the tie-break
	CodeNotTrusted = paths.CodeNotTrusted // the peer is not (or no longer) trusted
	CodeBadWelcome = paths.CodeBadWelcome // the peer spoke an unknown protocol
	CodePathDead   = paths.CodePathDead   // nothing came back for 5 s while we sent
)

// Stream error codes (RESET_STREAM / STOP_SENDING).
const (
	StreamClosed                          = paths.StreamClosed     // the application closed the stream
	StreamPortClosed                      = paths.StreamPortClosed // nothing listens on the port
	StreamBusy                            = paths.StreamBusy       // the listener's backlog is full
	StreamBadHeader                       = paths.StreamBadHeader  // malformed or late port header
	StreamAborted    quic.StreamErrorCode = 0x13                   // the application cut the stream (Abort)
)

// classify maps QUIC errors from a peer connection to our sentinels.
func classify(err error) error { return paths.Classify(err) }
