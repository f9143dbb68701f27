package ctl

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Framed connect streams.
//
// A client that sends the request header "Agentnet-Framing: 1" with its
// /v1/connect upgrade (and gets it back in the 101 answer) speaks frames on
// the socket instead of raw bytes, so that the end of a stream is explicit
// in both directions: a clean end (EOF) can never be confused with a cut
// (RESET). A daemon that does not know framing ignores the header and
// answers 101 without it: the client then falls back to raw bytes.
//
//	+----------+---------------------+----------------------+
//	| type (1) | length (2, big end.)| payload (length)     |
//	+----------+---------------------+----------------------+
//
//	0x01 DATA   1-65535 bytes of the stream
//	0x02 EOF    length 0: the sender's write half ended cleanly (half-close)
//	0x03 RESET  length 0-4096: the stream broke (daemon to client: a JSON
//	            error object {"code","message","hint"}) or the client aborts
//	            it (payload ignored); nothing follows
//	0x04 DONE   length 0, daemon to client only: both directions ended
//	            cleanly; the daemon closes the socket next
//
// Any other type, a DATA frame of length 0, an EOF or DONE frame with a
// payload, a frame after EOF in the same direction (other than RESET, and
// DONE from the daemon), or the socket ending without EOF, RESET or DONE is
// a broken stream.
const (
	// FramingHeader is the request and answer header that selects framing.
	FramingHeader = "Agentnet-Framing"
	// FramingVersion is its value.
	FramingVersion = "1"
)

// FrameType is the first byte of a frame.
type FrameType byte

// Frame types.
const (
	FrameData  FrameType = 0x01
	FrameEOF   FrameType = 0x02
	FrameReset FrameType = 0x03
	FrameDone  FrameType = 0x04
)

// Frame limits.
const (
	FrameHeaderLen  = 3
	MaxFrameData    = 65535
	MaxResetPayload = 4096
)

// ErrFrame is wrapped by every error about a malformed frame.
var ErrFrame = errors.New("ctl: malformed frame")

func (t FrameType) String() string {
	switch t {
	case FrameData:
		return "DATA"
	case FrameEOF:
		return "EOF"
	case FrameReset:
		return "RESET"
	case FrameDone:
		return "DONE"
	}
	return fmt.Sprintf("frame(%#x)", byte(t))
}

func checkFrame(t FrameType, n int) error {
	switch t {
	case FrameData:
		if n < 1 || n > MaxFrameData {
			return fmt.Errorf("%w: DATA of %d bytes", ErrFrame, n)
		}
	case FrameEOF, FrameDone:
		if n != 0 {
			return fmt.Errorf("%w: %s with a %d-byte payload", ErrFrame, t, n)
		}
	case FrameReset:
		if n > MaxResetPayload {
			return fmt.Errorf("%w: RESET payload of %d bytes", ErrFrame, n)
		}
	default:
		return fmt.Errorf("%w: unknown type %#x", ErrFrame, byte(t))
	}
	return nil
}

// AppendFrame appends one frame to b.
func AppendFrame(b []byte, t FrameType, payload []byte) ([]byte, error) {
	if err := checkFrame(t, len(payload)); err != nil {
		return b, err
	}
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	return append(b, payload...), nil
}

// ReadFrame reads one frame from r into buf, which must hold MaxFrameData
// bytes, and returns its type and payload (a slice of buf). A clean end of r
// before the first byte is io.EOF; inside a frame, io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, buf []byte) (FrameType, []byte, error) {
	var hdr [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	t, n := FrameType(hdr[0]), int(binary.BigEndian.Uint16(hdr[1:]))
	if err := checkFrame(t, n); err != nil {
		return 0, nil, err
	}
	if len(buf) < n {
		return 0, nil, fmt.Errorf("ctl: read frame: buffer of %d bytes for %d", len(buf), n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return t, buf[:n], nil
}

// AppendReset appends a RESET frame carrying e (its message, hint and peer
// text cut to fit).
func AppendReset(b []byte, e *Error) []byte {
	if e == nil {
		out, _ := AppendFrame(b, FrameReset, nil)
		return out
	}
	c := *e
	for {
		p, _ := json.Marshal(&c)
		if len(p) <= MaxResetPayload {
			out, _ := AppendFrame(b, FrameReset, p)
			return out
		}
		c.Message = c.Message[:len(c.Message)/2]
		c.Hint = c.Hint[:len(c.Hint)/2]
		c.PeerText = c.PeerText[:len(c.PeerText)/2]
	}
}

// ParseReset returns the error a RESET payload carries; an empty or
// unreadable payload is a CodeStreamReset error without details.
func ParseReset(p []byte) *Error {
	var e Error
	if len(p) == 0 || json.Unmarshal(p, &e) != nil || e.Code == "" {
		return &Error{Code: CodeStreamReset, Message: "the stream was reset", Hint: StreamResetHint}
	}
	return &e
}
