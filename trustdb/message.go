package trustdb

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/internal/wire"
	"math"
	"time"
	"unicode/utf8"

	"github.com/agentnet/agentnet/addressing"
)

// Kind is the kind of a trust message.
type Kind uint8

// Message kinds.
const (
	KindRequest Kind = 1 // "please trust me": asks the addressee for consent
	KindApprove Kind = 2 // consent to the request whose nonce is in ReplyTo
	KindReject  Kind = 3 // refusal of the request whose nonce is in ReplyTo
	KindRevoke  Kind = 4 // withdrawal of consent given earlier
)

// String returns "request", "approve", "reject" or "revoke".
func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindApprove:
		return "approve"
	case KindReject:
		return "reject"
	case KindRevoke:
		return "revoke"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IsValid reports whether k is one of the four kinds.
func (k Kind) IsValid() bool { return k >= KindRequest && k <= KindRevoke }

// NonceSize is the size of a message nonce.
const NonceSize = 16

// Limits of a message.
const (
	MaxMessageSize = 1024 // bytes of an encoded message; ParseMessage refuses more
	MaxNoteLen     = 256  // bytes of Message.Note (valid UTF-8)
)

// MaxMessageAge is how old a message may be when it arrives (the rendezvous
// mailbox keeps messages this long); older ones are refused, as are messages
// more than MaxClockSkew in the future.
const MaxMessageAge = 30 * 24 * time.Hour

// MaxClockSkew is how far in the future a message's Time may be.
const MaxClockSkew = 5 * time.Minute

// messageVersion is the first byte of every encoded message.
const messageVersion = 1

// signDomain prefixes the signed bytes, so a message signature can never be
// mistaken for a signature of anything else made with the same key.
const signDomain = "agentnet trust v1\x00"

// To field types on the wire.
const (
	toAddr     = 1
	toHostname = 2
)

// Message is a signed trust message (consent). The receiver verifies it
// itself; the rendezvous only stores and forwards it and cannot forge one.
// A Message is a plain value: not safe for concurrent mutation, but
// AppendBinary and Verify only read it.
type Message struct {
	Kind Kind
	// From is the signer's key.
	From addressing.PublicKey
	// To names the addressee: for a request its address or hostname (the
	// requester may know only the hostname); for approve, reject and revoke
	// the peer's address (network 0).
	To addressing.Target
	// Nonce is random and fresh for every message; never zero.
	Nonce [NonceSize]byte
	// ReplyTo is, for approve and reject, the Nonce of the request answered;
	// zero for request and revoke.
	ReplyTo [NonceSize]byte
	// Time is the sender's clock when it made the message (nanosecond
	// precision on the wire, after 1970).
	Time time.Time
	// Hostname is the sender's own hostname, informational; "" or valid per
	// addressing.ValidateHostname.
	Hostname string
	// Note is free text for the operator, at most MaxNoteLen bytes of UTF-8.
	Note string
	// Sig is From's Ed25519 signature over the canonical encoding.
	Sig [64]byte
}

// NewMessage returns a message from id, with a random nonce and the current
// time, signed. replyTo must be the request's nonce for approve and reject and
// zero otherwise.
func NewMessage(id *Identity, kind Kind, to addressing.Target, replyTo [NonceSize]byte, hostname, note string) (*Message, error) {
	return newMessageAt(id, kind, to, replyTo, hostname, note, time.Now())
}

func newMessageAt(id *Identity, kind Kind, to addressing.Target, replyTo [NonceSize]byte, hostname, note string, now time.Time) (*Message, error) {
	if id == nil {
		return nil, errors.New("trustdb: new message: nil identity")
	}
	m := &Message{
		Kind:     kind,
		From:     id.PublicKey(),
		To:       to,
		ReplyTo:  replyTo,
		Time:     time.Unix(0, now.UnixNano()),
		Hostname: hostname,
		Note:     note,
	}
	if _, err := rand.Read(m.Nonce[:]); err != nil {
		return nil, fmt.Errorf("trustdb: new message: nonce: %w", err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("trustdb: new %s message: %w", kind, err)
	}
	body := m.appendSigned(make([]byte, 0, len(signDomain)+128+len(note)))
	copy(m.Sig[:], id.Sign(body))
	return m, nil
}

// validate checks every field but Sig.
func (m *Message) validate() error {
	if !m.Kind.IsValid() {
		return fmt.Errorf("unknown kind %d", uint8(m.Kind))
	}
	if m.From.IsZero() {
		return errors.New("zero From key")
	}
	if !m.To.IsValid() {
		return errors.New("invalid To")
	}
	if _, isHost := m.To.Hostname(); isHost {
		if m.Kind != KindRequest {
			return fmt.Errorf("a %s must name the peer by address, not hostname", m.Kind)
		}
		// Target values made by ParseTarget are valid; a zero-value struct
		// literal cannot carry a hostname, so this is defensive.
		if h, _ := m.To.Hostname(); addressing.ValidateHostname(h) != nil {
			return errors.New("invalid To hostname")
		}
	}
	if m.Nonce == ([NonceSize]byte{}) {
		return errors.New("zero nonce")
	}
	zeroReply := m.ReplyTo == ([NonceSize]byte{})
	switch m.Kind {
	case KindApprove, KindReject:
		if zeroReply {
			return fmt.Errorf("a %s needs ReplyTo (the request's nonce)", m.Kind)
		}
	default:
		if !zeroReply {
			return fmt.Errorf("a %s must have a zero ReplyTo", m.Kind)
		}
	}
	if m.Time.IsZero() || m.Time.Before(time.Unix(0, 1)) || m.Time.After(time.Unix(0, math.MaxInt64)) {
		return errors.New("time out of range")
	}
	if m.Hostname != "" {
		if err := addressing.ValidateHostname(m.Hostname); err != nil {
			return err
		}
	}
	if len(m.Note) > MaxNoteLen {
		return fmt.Errorf("note is %d bytes, max %d", len(m.Note), MaxNoteLen)
	}
	if !utf8.ValidString(m.Note) {
		return errors.New("note is not valid UTF-8")
	}
	return nil
}

// appendBody appends the encoding of every field but Sig.
func (m *Message) appendBody(b []byte) []byte {
	b = append(b, messageVersion, byte(m.Kind))
	b = append(b, m.From[:]...)
	if a, ok := m.To.Addr(); ok {
		b = append(b, toAddr)
		b, _ = a.AppendBinary(b)
	} else {
		h, _ := m.To.Hostname()
		b = append(b, toHostname, byte(len(h)))
		b = append(b, h...)
	}
	b = append(b, m.Nonce[:]...)
	b = append(b, m.ReplyTo[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Time.UnixNano()))
	b = append(b, byte(len(m.Hostname)))
	b = append(b, m.Hostname...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Note)))
	return append(b, m.Note...)
}

// appendSigned appends the bytes the signature covers.
func (m *Message) appendSigned(b []byte) []byte {
	return m.appendBody(append(b, signDomain...))
}

// AppendBinary appends the canonical encoding of m (see the package doc) to
// b. It fails if a field is invalid; it does not check the signature.
func (m *Message) AppendBinary(b []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return b, fmt.Errorf("trustdb: encode message: %w", err)
	}
	b = m.appendBody(b)
	return append(b, m.Sig[:]...), nil
}

// MarshalBinary returns the canonical encoding of m.
func (m *Message) MarshalBinary() ([]byte, error) { return m.AppendBinary(nil) }

// ParseMessage decodes a message strictly: every length is checked, every
// field validated, the encoding must be at most MaxMessageSize bytes and
// exactly one message long (trailing bytes are refused: the signature covers
// exact bytes, and a message has only one encoding). It does NOT verify the
// signature; call Verify. Errors wrap ErrMalformed. The Message does not alias
// b.
func ParseMessage(b []byte) (*Message, error) {
	m, err := parseMessage(b)
	if err != nil {
		return nil, fmt.Errorf("trustdb: parse message: %w: %w", ErrMalformed, err)
	}
	return m, nil
}

func parseMessage(b []byte) (*Message, error) {
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%d bytes, max %d", len(b), MaxMessageSize)
	}
	r := wire.NewReader(b)
	if v := r.Byte(); r.Err() == nil && v != messageVersion {
		return nil, fmt.Errorf("unknown version %d", v)
	}
	m := new(Message)
	m.Kind = Kind(r.Byte())
	r.Copy(m.From[:])
	switch r.Byte() {
	case toAddr:
		a, ok := addressing.AddrFromBinary(r.Next(addressing.AddrSize))
		if ok {
			m.To = addressing.TargetAddr(a)
		}
	case toHostname:
		h := r.Next(int(r.Byte()))
		if r.Err() == nil {
			t, err := addressing.ParseTarget(string(h))
			if err != nil || len(h) == 0 {
				return nil, fmt.Errorf("invalid To hostname %q", h)
			}
			if _, isHost := t.Hostname(); !isHost {
				return nil, fmt.Errorf("invalid To hostname %q", h)
			}
			m.To = t
		}
	default:
		if r.Err() == nil {
			return nil, errors.New("unknown To type")
		}
	}
	r.Copy(m.Nonce[:])
	r.Copy(m.ReplyTo[:])
	m.Time = time.Unix(0, int64(r.Uint64()))
	m.Hostname = string(r.Next(int(r.Byte())))
	m.Note = string(r.Next(int(r.Uint16())))
	r.Copy(m.Sig[:])
	if r.Err() != nil {
		return nil, r.Err()
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%d trailing bytes", r.Len())
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// Verify checks that Sig is From's valid signature over m's canonical
// encoding and that m is well formed (From a usable key among them). Errors
// wrap ErrBadSignature or ErrMalformed.
func (m *Message) Verify() error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("trustdb: verify message: %w: %w", ErrMalformed, err)
	}
	body := m.appendSigned(make([]byte, 0, len(signDomain)+128+len(m.Note)))
	if !m.From.Verify(body, m.Sig[:]) {
		return fmt.Errorf("trustdb: %s from %s: %w", m.Kind, m.From, ErrBadSignature)
	}
	return nil
}

// String describes m for logs: kind, sender, addressee, time. Notes and
// signatures are left out.
func (m *Message) String() string {
	return fmt.Sprintf("%s from %s (%s) to %s at %s", m.Kind, m.From.NodeID(), m.From, m.To, m.Time.UTC().Format(time.RFC3339Nano))
}
