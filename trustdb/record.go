package trustdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/internal/wire"
	"time"
	"unicode/utf8"

	"github.com/agentnet/agentnet/addressing"
)

// State is the state of a trust record. The zero State means "no record".
type State uint8

// Record states; see the package doc for the transitions.
const (
	StatePendingOut State = 1 // we asked the peer for trust, no answer yet
	StatePendingIn  State = 2 // the peer asked us; waiting for our Approve or Reject
	StateTrusted    State = 3 // both sides consented: the peer may connect
	StateRevoked    State = 4 // consent withdrawn (by either side)
	StateRejected   State = 5 // a request was refused (by either side)
)

// String returns "pending-out", "pending-in", "trusted", "revoked" or
// "rejected" ("none" for the zero State).
func (s State) String() string {
	switch s {
	case 0:
		return "none"
	case StatePendingOut:
		return "pending-out"
	case StatePendingIn:
		return "pending-in"
	case StateTrusted:
		return "trusted"
	case StateRevoked:
		return "revoked"
	case StateRejected:
		return "rejected"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// IsValid reports whether s is one of the five states.
func (s State) IsValid() bool { return s >= StatePendingOut && s <= StateRejected }

// MarshalText implements encoding.TextMarshaler (the String form).
func (s State) MarshalText() ([]byte, error) {
	if !s.IsValid() {
		return nil, fmt.Errorf("trustdb: invalid state %d", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *State) UnmarshalText(b []byte) error {
	for v := StatePendingOut; v <= StateRejected; v++ {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("trustdb: unknown state %q", b)
}

// Record is what the Store knows about one peer. Records returned by the
// Store are copies the caller owns.
type Record struct {
	// Key is the peer's key; zero only for a pending-out request whose
	// target key is not known yet (we asked for an address or hostname).
	Key addressing.PublicKey
	// Target is what we asked for in our request (address or hostname text);
	// "" if we never asked.
	Target string
	// Hostname is the peer's hostname if known ("" otherwise).
	Hostname string
	State    State
	// Nonce is the nonce of the request the record is about: ours for
	// pending-out (and the trust it led to), the peer's for pending-in.
	Nonce [NonceSize]byte
	// Note is the note of the latest message in the exchange: ours for a
	// pending-out request, the peer's for messages we received.
	Note string
	// Consent is the encoded Message from the peer that established the
	// current state (its request, approve, reject or revoke); nil if the
	// peer has sent nothing yet.
	Consent []byte
	// PeerTime is the Time of the newest message accepted from this peer;
	// later messages must be strictly newer (replay guard). Zero if none.
	PeerTime time.Time
	// Created and Updated are our clock when the record was created and last
	// changed.
	Created, Updated time.Time
	// EverTrusted reports that the peer was trusted at some point. Records
	// of peers never trusted (a stranger's request, rejected or withdrawn)
	// are bounded and expire (MaxUntrusted); the others stay until Forget.
	EverTrusted bool
}

// Addr returns the peer's address in network 0, or, for a pending-out request
// by address, the address asked for; the zero Addr if unknown.
func (r Record) Addr() addressing.Addr {
	if !r.Key.IsZero() {
		return addressing.AddrFrom(0, r.Key.NodeID())
	}
	if t, err := addressing.ParseTarget(r.Target); err == nil {
		if a, ok := t.Addr(); ok {
			return a
		}
	}
	return addressing.Addr{}
}

// String describes r for logs (no note, no consent bytes).
func (r Record) String() string {
	who := r.Target
	if !r.Key.IsZero() {
		who = r.Addr().String()
	}
	if r.Hostname != "" {
		who += " (" + r.Hostname + ")"
	}
	return r.State.String() + " " + who
}

// recordVersion is the first byte of an encoded Record. Version 1 lacked the
// flags byte; it still parses, as a record of a peer we may have trusted
// (EverTrusted), so that no old record expires.
const (
	recordVersion   = 2
	recordVersionV1 = 1
)

// Record flags.
const flagEverTrusted = 1 << 0

// Limits of a record's variable fields.
const (
	maxTargetLen = 255
)

// AppendBinary appends the versioned binary encoding of r to b:
//
//	version (1) = 2 | state (1) | key (32) | nonce (16)
//	peer time (8) | created (8) | updated (8)      int64 unix ns, 0 = zero time
//	target len (1) | target | hostname len (1) | hostname
//	note len (2) | note | consent len (2) | consent
//	flags (1): bit 0 EverTrusted, the others 0       (not in version 1)
//
// Later versions may append fields; ParseRecord ignores trailing bytes.
func (r Record) AppendBinary(b []byte) ([]byte, error) {
	if err := r.validate(); err != nil {
		return b, fmt.Errorf("trustdb: encode record: %w", err)
	}
	b = append(b, recordVersion, byte(r.State))
	b = append(b, r.Key[:]...)
	b = append(b, r.Nonce[:]...)
	b = appendTime(b, r.PeerTime)
	b = appendTime(b, r.Created)
	b = appendTime(b, r.Updated)
	b = append(b, byte(len(r.Target)))
	b = append(b, r.Target...)
	b = append(b, byte(len(r.Hostname)))
	b = append(b, r.Hostname...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Note)))
	b = append(b, r.Note...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Consent)))
	b = append(b, r.Consent...)
	var flags byte
	if r.EverTrusted {
		flags |= flagEverTrusted
	}
	return append(b, flags), nil
}

// ParseRecord decodes a record encoded by AppendBinary. Every length is
// checked and every field validated (the Consent must parse as a Message);
// trailing bytes are ignored for forward compatibility. Errors wrap
// ErrMalformed. The Record does not alias b.
func ParseRecord(b []byte) (Record, error) {
	r, err := parseRecord(b)
	if err != nil {
		return Record{}, fmt.Errorf("trustdb: parse record: %w: %w", ErrMalformed, err)
	}
	return r, nil
}

func parseRecord(b []byte) (Record, error) {
	var r Record
	rd := wire.NewReader(b)
	v := rd.Byte()
	if rd.Err() == nil && v != recordVersion && v != recordVersionV1 {
		return r, fmt.Errorf("unknown version %d", v)
	}
	r.State = State(rd.Byte())
	rd.Copy(r.Key[:])
	rd.Copy(r.Nonce[:])
	r.PeerTime = timeFrom(rd.Uint64())
	r.Created = timeFrom(rd.Uint64())
	r.Updated = timeFrom(rd.Uint64())
	r.Target = string(rd.Next(int(rd.Byte())))
	r.Hostname = string(rd.Next(int(rd.Byte())))
	r.Note = string(rd.Next(int(rd.Uint16())))
	if c := rd.Next(int(rd.Uint16())); len(c) > 0 {
		r.Consent = append([]byte(nil), c...)
	}
	if v == recordVersionV1 {
		r.EverTrusted = true
	} else {
		flags := rd.Byte()
		if rd.Err() == nil && flags&^flagEverTrusted != 0 {
			return Record{}, fmt.Errorf("unknown flags %#x", flags)
		}
		r.EverTrusted = flags&flagEverTrusted != 0
	}
	if rd.Err() != nil {
		return Record{}, rd.Err()
	}
	if err := r.validate(); err != nil {
		return Record{}, err
	}
	return r, nil
}

func (r *Record) validate() error {
	if !r.State.IsValid() {
		return fmt.Errorf("invalid state %d", uint8(r.State))
	}
	if r.Key.IsZero() && r.State != StatePendingOut {
		return fmt.Errorf("zero key in a %s record", r.State)
	}
	if r.Target != "" {
		if len(r.Target) > maxTargetLen {
			return errors.New("target too long")
		}
		if _, err := addressing.ParseTarget(r.Target); err != nil {
			return fmt.Errorf("target: %w", err)
		}
	} else if r.State == StatePendingOut {
		return errors.New("pending-out record without target")
	}
	if r.Hostname != "" {
		if err := addressing.ValidateHostname(r.Hostname); err != nil {
			return err
		}
	}
	if len(r.Note) > MaxNoteLen || !utf8.ValidString(r.Note) {
		return errors.New("note too long or not UTF-8")
	}
	if len(r.Consent) > 0 {
		m, err := ParseMessage(r.Consent)
		if err != nil {
			return fmt.Errorf("consent: %w", err)
		}
		if !r.Key.IsZero() && m.From != r.Key {
			return errors.New("consent is not from the record's key")
		}
	}
	return nil
}

func appendTime(b []byte, t time.Time) []byte {
	var v int64
	if !t.IsZero() {
		v = t.UnixNano()
	}
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

func timeFrom(v uint64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v))
}
