package event

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// Frame types.
const (
	TypeSubscribe byte = 1
	TypePublish   byte = 2
	TypeEvent     byte = 3
	TypeAck       byte = 4
)

// Limits of the wire format.
const (
	MaxTopic    = 255
	MaxPatterns = 16
	MaxData     = 60 << 10
	MaxAckText  = 1024
	MaxFrame    = 64 << 10
)

// Ack statuses.
const (
	StatusOK         byte = 0
	StatusBadRequest byte = 1
	StatusRefused    byte = 2
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("event: malformed frame")

// Event is one published event.
type Event struct {
	Topic   string
	Data    []byte
	From    addressing.Addr // the publisher
	Seq     uint64          // per bus, increasing
	Time    time.Time
	Dropped uint64 // events the receiving subscription lost before this one
}

// Ack answers a subscribe or a publish.
type Ack struct {
	Status    byte
	Delivered uint32 // publish: subscribers the event was queued for
	Text      string
}

// AppendSubscribe appends a subscribe frame body.
func AppendSubscribe(b []byte, patterns []string) ([]byte, error) {
	if len(patterns) == 0 || len(patterns) > MaxPatterns {
		return b, fmt.Errorf("event: subscribe: want 1-%d patterns, got %d", MaxPatterns, len(patterns))
	}
	b = append(b, byte(len(patterns)))
	for _, p := range patterns {
		if len(p) == 0 || len(p) > MaxTopic {
			return b, fmt.Errorf("event: subscribe: pattern length %d", len(p))
		}
		b = append(b, byte(len(p)))
		b = append(b, p...)
	}
	return b, nil
}

// ParseSubscribe parses a subscribe frame body. It checks lengths, not the
// pattern syntax (see ValidatePattern).
func ParseSubscribe(b []byte) ([]string, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("%w: empty subscribe", ErrMalformed)
	}
	n := int(b[0])
	if n == 0 || n > MaxPatterns {
		return nil, fmt.Errorf("%w: %d patterns", ErrMalformed, n)
	}
	b = b[1:]
	out := make([]string, 0, n)
	for range n {
		s, rest, err := readString8(b)
		if err != nil {
			return nil, err
		}
		if s == "" {
			return nil, fmt.Errorf("%w: empty pattern", ErrMalformed)
		}
		out = append(out, s)
		b = rest
	}
	return out, nil
}

// AppendPublish appends a publish frame body.
func AppendPublish(b []byte, topic string, data []byte) ([]byte, error) {
	if len(topic) == 0 || len(topic) > MaxTopic {
		return b, fmt.Errorf("event: publish: topic length %d", len(topic))
	}
	if len(data) > MaxData {
		return b, fmt.Errorf("event: publish: %d bytes of data, max %d", len(data), MaxData)
	}
	b = append(b, byte(len(topic)))
	b = append(b, topic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...), nil
}

// ParsePublish parses a publish frame body. data aliases b.
func ParsePublish(b []byte) (topic string, data []byte, err error) {
	topic, b, err = readString8(b)
	if err != nil {
		return "", nil, err
	}
	if topic == "" {
		return "", nil, fmt.Errorf("%w: empty topic", ErrMalformed)
	}
	data, _, err = readBytes32(b)
	return topic, data, err
}

// AppendEvent appends an event frame body.
func AppendEvent(b []byte, ev Event) ([]byte, error) {
	if len(ev.Topic) == 0 || len(ev.Topic) > MaxTopic {
		return b, fmt.Errorf("event: topic length %d", len(ev.Topic))
	}
	if len(ev.Data) > MaxData {
		return b, fmt.Errorf("event: %d bytes of data, max %d", len(ev.Data), MaxData)
	}
	b = binary.BigEndian.AppendUint64(b, ev.Seq)
	var t int64
	if !ev.Time.IsZero() {
		t = ev.Time.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(t))
	b = binary.BigEndian.AppendUint64(b, ev.Dropped)
	b, _ = ev.From.AppendBinary(b)
	b = append(b, byte(len(ev.Topic)))
	b = append(b, ev.Topic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ev.Data)))
	return append(b, ev.Data...), nil
}

// ParseEvent parses an event frame body. Data aliases b.
func ParseEvent(b []byte) (Event, error) {
	if len(b) < 32 {
		return Event{}, fmt.Errorf("%w: event too short", ErrMalformed)
	}
	var ev Event
	ev.Seq = binary.BigEndian.Uint64(b)
	if t := int64(binary.BigEndian.Uint64(b[8:])); t != 0 {
		ev.Time = time.Unix(0, t)
	}
	ev.Dropped = binary.BigEndian.Uint64(b[16:])
	a, ok := addressing.AddrFromBinary(b[24:32])
	if !ok {
		return Event{}, fmt.Errorf("%w: publisher address", ErrMalformed)
	}
	ev.From = a
	var err error
	rest := b[32:]
	ev.Topic, rest, err = readString8(rest)
	if err != nil {
		return Event{}, err
	}
	if ev.Topic == "" {
		return Event{}, fmt.Errorf("%w: empty topic", ErrMalformed)
	}
	ev.Data, _, err = readBytes32(rest)
	return ev, err
}

// AppendAck appends an ack frame body; overlong text is cut.
func AppendAck(b []byte, a Ack) []byte {
	t := a.Text
	if len(t) > MaxAckText {
		t = t[:MaxAckText]
	}
	b = append(b, a.Status)
	b = binary.BigEndian.AppendUint32(b, a.Delivered)
	b = binary.BigEndian.AppendUint16(b, uint16(len(t)))
	return append(b, t...)
}

// ParseAck parses an ack frame body.
func ParseAck(b []byte) (Ack, error) {
	if len(b) < 7 {
		return Ack{}, fmt.Errorf("%w: ack too short", ErrMalformed)
	}
	a := Ack{Status: b[0], Delivered: binary.BigEndian.Uint32(b[1:])}
	n := int(binary.BigEndian.Uint16(b[5:]))
	if n > MaxAckText || len(b) < 7+n {
		return Ack{}, fmt.Errorf("%w: ack text truncated", ErrMalformed)
	}
	a.Text = string(b[7 : 7+n])
	return a, nil
}

func readString8(b []byte) (string, []byte, error) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", nil, fmt.Errorf("%w: string truncated", ErrMalformed)
	}
	n := int(b[0])
	return string(b[1 : 1+n]), b[1+n:], nil
}

func readBytes32(b []byte) ([]byte, []byte, error) {
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("%w: data length truncated", ErrMalformed)
	}
	n := binary.BigEndian.Uint32(b)
	if n > MaxData || uint32(len(b)-4) < n {
		return nil, nil, fmt.Errorf("%w: data truncated or too long", ErrMalformed)
	}
	return b[4 : 4+n], b[4+n:], nil
}

// AppendFrame appends a whole frame: length, type, body.
func AppendFrame(b []byte, typ byte, body []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(1+len(body)))
	b = append(b, typ)
	return append(b, body...)
}

// ReadFrame reads one frame and returns its type and body.
func ReadFrame(r io.Reader) (byte, []byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n < 1 || n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: frame length %d", ErrMalformed, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, err
	}
	return b[0], b[1:], nil
}
