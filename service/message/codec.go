package message

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the wire format version.
const Version = 1

// Kind is the type of an item.
type Kind uint8

// Item kinds.
const (
	KindText   Kind = 1 // UTF-8 text
	KindJSON   Kind = 2 // one JSON value
	KindBinary Kind = 3 // opaque bytes
	KindFile   Kind = 4 // a file with a name
)

var kindNames = [...]string{KindText: "text", KindJSON: "json", KindBinary: "binary", KindFile: "file"}

// String returns "text", "json", "binary" or "file".
func (k Kind) String() string {
	if k.IsValid() {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IsValid reports whether k is a known kind.
func (k Kind) IsValid() bool { return k >= KindText && k <= KindFile }

// ParseKind parses the String form of a kind.
func ParseKind(s string) (Kind, error) {
	for k := KindText; k <= KindFile; k++ {
		if kindNames[k] == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("message: unknown kind %q", s)
}

// Status is the receiver's verdict in an ack.
type Status uint8

// Ack statuses.
const (
	StatusOK         Status = 0
	StatusTooLarge   Status = 1
	StatusBadRequest Status = 2
	StatusChecksum   Status = 3
	StatusInboxFull  Status = 4
	StatusInternal   Status = 5
)

var statusNames = [...]string{"ok", "too large", "bad request", "checksum mismatch", "inbox full", "internal error"}

// String returns a short description of s.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Limits of the wire format.
const (
	MaxName      = 255
	MaxAckText   = 1024
	MaxFrame     = 4096
	SumSize      = 32
	headerFixed  = 1 + 1 + 8 + 1
	ackFixed     = 1 + 1 + SumSize + 1
	maxIDLength  = 64
	frameLenSize = 2
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("message: malformed frame")

// Header announces an item.
type Header struct {
	Kind Kind
	Size uint64 // body length in bytes
	Name string // file name as the sender calls it (files); may be empty
}

// AppendHeader appends the encoding of h (a frame body, without the length
// prefix) to b.
func AppendHeader(b []byte, h Header) ([]byte, error) {
	if !h.Kind.IsValid() {
		return b, fmt.Errorf("message: header: invalid kind %d", h.Kind)
	}
	if len(h.Name) > MaxName {
		return b, fmt.Errorf("message: header: name longer than %d bytes", MaxName)
	}
	b = append(b, Version, byte(h.Kind))
	b = binary.BigEndian.AppendUint64(b, h.Size)
	b = append(b, byte(len(h.Name)))
	return append(b, h.Name...), nil
}

// ParseHeader parses a header frame body. Trailing bytes are ignored.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < headerFixed {
		return Header{}, fmt.Errorf("%w: header too short", ErrMalformed)
	}
	if b[0] != Version {
		return Header{}, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	h := Header{Kind: Kind(b[1]), Size: binary.BigEndian.Uint64(b[2:10])}
	if !h.Kind.IsValid() {
		return Header{}, fmt.Errorf("%w: kind %d", ErrMalformed, b[1])
	}
	n := int(b[10])
	if len(b) < headerFixed+n {
		return Header{}, fmt.Errorf("%w: name truncated", ErrMalformed)
	}
	h.Name = string(b[headerFixed : headerFixed+n])
	return h, nil
}

// Ack is the receiver's answer.
type Ack struct {
	Status Status
	Sum    [SumSize]byte // SHA-256 the receiver computed (zero unless ok)
	ID     string        // the item's ID in the receiver's inbox (ok only)
	Text   string        // a short explanation, for people
}

// AppendAck appends the encoding of a (a frame body) to b. Overlong ID and
// Text are cut.
func AppendAck(b []byte, a Ack) []byte {
	id, text := a.ID, a.Text
	if len(id) > maxIDLength {
		id = id[:maxIDLength]
	}
	if len(text) > MaxAckText {
		text = text[:MaxAckText]
	}
	b = append(b, Version, byte(a.Status))
	b = append(b, a.Sum[:]...)
	b = append(b, byte(len(id)))
	b = append(b, id...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

// ParseAck parses an ack frame body. Trailing bytes are ignored.
func ParseAck(b []byte) (Ack, error) {
	if len(b) < ackFixed {
		return Ack{}, fmt.Errorf("%w: ack too short", ErrMalformed)
	}
	if b[0] != Version {
		return Ack{}, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	a := Ack{Status: Status(b[1])}
	copy(a.Sum[:], b[2:2+SumSize])
	rest := b[ackFixed:]
	n := int(b[ackFixed-1])
	if n > maxIDLength || len(rest) < n+2 {
		return Ack{}, fmt.Errorf("%w: ack id truncated", ErrMalformed)
	}
	a.ID = string(rest[:n])
	rest = rest[n:]
	t := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if t > MaxAckText || len(rest) < t {
		return Ack{}, fmt.Errorf("%w: ack text truncated", ErrMalformed)
	}
	a.Text = string(rest[:t])
	return a, nil
}

// appendFrame appends body with its 2-byte length prefix.
func appendFrame(b, body []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// readFrame reads one length-prefixed frame of at most MaxFrame bytes.
func readFrame(r io.Reader) ([]byte, error) {
	var l [frameLenSize]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes", ErrMalformed, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}
