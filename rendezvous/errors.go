package rendezvous

import (
	"errors"

	"github.com/agentnet/agentnet/rendezvous/proto"
)

// Sentinel errors. Errors from this package wrap them; test with errors.Is.
var (
	// ErrNotFound: the agent does not exist, or the asker may not see it.
	// The two are indistinguishable on purpose.
	ErrNotFound = errors.New("rendezvous: not found")
	// ErrHostnameTaken: another key holds the hostname.
	ErrHostnameTaken = errors.New("rendezvous: hostname taken")
	// ErrNodeIDTaken: another key already holds this key's NodeID (a 48-bit
	// collision); the registry refuses the second key.
	ErrNodeIDTaken = errors.New("rendezvous: node ID taken by another key")
	// ErrRateLimited: over the per-key or per-address request rate; retry later.
	ErrRateLimited = errors.New("rendezvous: rate limited")
	// ErrBadMessage: the trust message is malformed, forged, out of its time
	// window, or not signed by the sender's own key. Permanent.
	ErrBadMessage = errors.New("rendezvous: trust message refused")
	// ErrReplay: the trust message was relayed before. Permanent.
	ErrReplay = errors.New("rendezvous: trust message replayed")
	// ErrNoRequest: an approve or reject answers no pending request. Permanent.
	ErrNoRequest = errors.New("rendezvous: no matching pending request")
	// ErrServerKey: the server presented a key other than the pinned one
	// (configured or trusted on first use). Only the operator can resolve it.
	ErrServerKey = errors.New("rendezvous: server key does not match the pinned key")
	// ErrLimit: a capacity limit of the server (registered agents, a
	// mailbox); retry later.
	ErrLimit = errors.New("rendezvous: server limit reached")
	// ErrNetworkTaken: another network has that name.
	ErrNetworkTaken = errors.New("rendezvous: network name taken")
	// ErrStoreDamaged: the server's store file is damaged (empty, truncated,
	// a bad meta page, an unreadable page, an inconsistency bbolt's check
	// found), or an EtcdStore's prefix holds records of another layout or
	// without a layout record (not written by a rendezvous server). The
	// server does not open or overwrite it; the error says how to restore
	// the last good copy.
	ErrStoreDamaged = errors.New("rendezvous: store damaged")
	// ErrStoreMismatch: the store does not belong to the server's identity:
	// it is missing or empty although the identity existed, it belongs to
	// another server key, or the identity is missing while the store holds
	// state. Start refuses rather than serve from the wrong state.
	ErrStoreMismatch = errors.New("rendezvous: store and server identity do not match")
)

// ServerError is an error answer from the server. It matches the sentinel of
// its code with errors.Is (ErrRateLimited for "rate_limited", ...).
type ServerError struct {
	Code proto.ErrorCode
	Text string // the server's short explanation, informational
}

// Error returns "rendezvous: server: <code>[: <text>]".
func (e *ServerError) Error() string {
	if e.Text == "" {
		return "rendezvous: server: " + e.Code.String()
	}
	return "rendezvous: server: " + e.Code.String() + ": " + e.Text
}

// Is reports whether target is the sentinel for e's code.
func (e *ServerError) Is(target error) bool {
	s := codeSentinel(e.Code)
	return s != nil && s == target
}

func codeSentinel(c proto.ErrorCode) error {
	switch c {
	case proto.CodeHostnameTaken:
		return ErrHostnameTaken
	case proto.CodeNodeIDTaken:
		return ErrNodeIDTaken
	case proto.CodeRateLimited:
		return ErrRateLimited
	case proto.CodeBadMessage:
		return ErrBadMessage
	case proto.CodeReplay:
		return ErrReplay
	case proto.CodeNoRequest:
		return ErrNoRequest
	case proto.CodeLimit:
		return ErrLimit
	case proto.CodeNetworkTaken:
		return ErrNetworkTaken
	}
	return nil
}
