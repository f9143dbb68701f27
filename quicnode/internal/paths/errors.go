package paths

import (
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"
)

// Errors the manager returns; package quicnode re-exports them.
var (
	// ErrNotTrusted: the peer is not trusted by us, or its gate refused us.
	ErrNotTrusted = errors.New("peer not trusted")
	// ErrUnreachable: a trusted peer has no usable path (offline, or no
	// candidate answered).
	ErrUnreachable = errors.New("peer unreachable")
	// ErrPortClosed: nothing listens on the virtual port.
	ErrPortClosed = errors.New("virtual port closed")
	// ErrBusy: the peer's listener backlog is full.
	ErrBusy = errors.New("peer listener backlog full")

	// ErrDuplicate: a simultaneous dial lost the tie-break; the winner's
	// link is (about to be) registered.
	ErrDuplicate = errors.New("duplicate connection")
)

// Application error codes on peer connections.
const (
	CodeClosing    quic.ApplicationErrorCode = 0x0 // the node is shutting down
	CodeRevoked    quic.ApplicationErrorCode = 0x1 // trust was revoked
	CodeDuplicate  quic.ApplicationErrorCode = 0x2 // a simultaneous dial lost the tie-break
	CodeNotTrusted quic.ApplicationErrorCode = 0x3 // the peer is not (or no longer) trusted
	CodeBadWelcome quic.ApplicationErrorCode = 0x4 // the peer spoke an unknown protocol
	CodePathDead   quic.ApplicationErrorCode = 0x5 // nothing came back for PathDead while we sent
)

// Stream error codes (RESET_STREAM / STOP_SENDING).
const (
	StreamClosed     quic.StreamErrorCode = 0x0  // the application closed the stream
	StreamPortClosed quic.StreamErrorCode = 0x10 // nothing listens on the port
	StreamBusy       quic.StreamErrorCode = 0x11 // the listener's backlog is full
	StreamBadHeader  quic.StreamErrorCode = 0x12 // malformed or late port header
)

// Classify maps QUIC errors from a peer connection to the sentinels.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode.IsCryptoError() {
		// Either gate refused: the peer's (remote) or ours (local, the
		// peer presented a key we do not trust or did not expect).
		return fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) {
		switch ae.ErrorCode {
		case CodeRevoked, CodeNotTrusted:
			return fmt.Errorf("%w: %w", ErrNotTrusted, err)
		case CodeDuplicate:
			return fmt.Errorf("%w: %w", ErrDuplicate, err)
		}
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		switch se.ErrorCode {
		case StreamPortClosed:
			return fmt.Errorf("%w: %w", ErrPortClosed, err)
		case StreamBusy:
			return fmt.Errorf("%w: %w", ErrBusy, err)
		}
	}
	return err
}
