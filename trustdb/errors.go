package trustdb

import "errors"

// Sentinel errors. Errors returned by this package wrap them; test with
// errors.Is. Every error from HandleMessage except one wrapping net.ErrClosed
// or a disk error is permanent: the same message will never be accepted, so a
// caller delivering from a mailbox should acknowledge (drop) it.
var (
	// ErrMalformed: an encoding or field is invalid.
	ErrMalformed = errors.New("trustdb: malformed")
	// ErrBadSignature: the signature does not verify.
	ErrBadSignature = errors.New("trustdb: bad signature")
	// ErrReplay: the message was seen before, or is not newer than the last
	// message accepted from its sender.
	ErrReplay = errors.New("trustdb: replayed message")
	// ErrExpired: the message is older than MaxMessageAge, or more than
	// MaxClockSkew in the future.
	ErrExpired = errors.New("trustdb: message time out of range")
	// ErrNotForUs: the message's To names neither our NodeID nor our hostname.
	ErrNotForUs = errors.New("trustdb: message not addressed to us")
	// ErrUnexpected: the message or action does not fit the current state
	// (an approve for no request of ours, a revoke from a peer we have no
	// record of, approving a peer that is not pending-in, ...).
	ErrUnexpected = errors.New("trustdb: unexpected in this state")
	// ErrOutboxFull: MaxOutbox messages wait for delivery; a local action
	// fails until the node delivers and acks some.
	ErrOutboxFull = errors.New("trustdb: outbox full")
)
