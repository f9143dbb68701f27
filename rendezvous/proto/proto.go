package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// Version is the protocol version carried in every frame header.
const Version = 1

// HeaderSize is the size of a frame header.
const HeaderSize = 4

// MaxBody is the largest frame body the protocol allows.
const MaxBody = 8 << 10

// MaxLocators is the most candidate addresses a Register or LookupResult carries.
const MaxLocators = 8

// MaxTrustMessage is the largest trust message TrustSend and Deliver carry.
const MaxTrustMessage = 1 << 10

// MaxText is the longest Error text.
const MaxText = 255

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("proto: malformed")

// ErrTooLarge is wrapped when a frame announces a body larger than allowed.
var ErrTooLarge = errors.New("proto: frame too large")

func malformed(what string) error { return fmt.Errorf("%w %s", ErrMalformed, what) }

// Type is a frame type.
type Type uint8

// Frame types.
const (
	TypeRegister     Type = 0x01
	TypeRegistered   Type = 0x02
	TypeLookup       Type = 0x03
	TypeLookupResult Type = 0x04
	TypeNotFound     Type = 0x05
	TypeSetHostname  Type = 0x06
	TypeTrustSend    Type = 0x07
	TypeDeliver      Type = 0x08
	TypeAck          Type = 0x09
	TypeOK           Type = 0x0a
	TypeError        Type = 0x0b
	TypeConnect      Type = 0x0c
	TypeIntroduce    Type = 0x0d

	TypeNetworkCreate  Type = 0x0e
	TypeNetworkInfo    Type = 0x0f
	TypeNetworkSend    Type = 0x10
	TypeNetworkMembers Type = 0x11
	TypeNetworkState   Type = 0x12

	TypeNATReport Type = 0x13
	TypePing      Type = 0x14
)

var typeNames = [...]string{
	TypeRegister: "register", TypeRegistered: "registered", TypeLookup: "lookup",
	TypeLookupResult: "lookup_result", TypeNotFound: "not_found", TypeSetHostname: "set_hostname",
	TypeTrustSend: "trust_send", TypeDeliver: "deliver", TypeAck: "ack", TypeOK: "ok", TypeError: "error",
	TypeConnect: "connect", TypeIntroduce: "introduce",
	TypeNetworkCreate: "network_create", TypeNetworkInfo: "network_info", TypeNetworkSend: "network_send",
	TypeNetworkMembers: "network_members", TypeNetworkState: "network_state",
	TypeNATReport: "nat_report", TypePing: "ping",
}

// String returns the type's snake_case name, or "type_0xNN".
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("type_0x%02x", uint8(t))
}

// Frame is one decoded frame. Body aliases the buffer it was parsed from.
type Frame struct {
	Type Type
	Body []byte
}

// AppendFrame appends a frame header for typ and body to b, then body.
func AppendFrame(b []byte, typ Type, body []byte) ([]byte, error) {
	if len(body) > MaxBody {
		return b, fmt.Errorf("%w: body %d bytes, max %d", ErrTooLarge, len(body), MaxBody)
	}
	b = append(b, Version, byte(typ))
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...), nil
}

// Pad extends the body of frame, one complete frame, with zero bytes until
// the frame is at least n bytes long (n is capped so the body stays within
// MaxBody). Receivers ignore trailing body bytes, so padding changes no
// meaning; it makes small requests big enough to draw a QUIC stateless
// reset from a server that lost the connection (resets answer only packets
// over 42 bytes).
func Pad(frame []byte, n int) []byte {
	if len(frame) < HeaderSize {
		return frame
	}
	n = min(n, HeaderSize+MaxBody)
	if len(frame) >= n {
		return frame
	}
	frame = append(frame, make([]byte, n-len(frame))...)
	binary.BigEndian.PutUint16(frame[2:4], uint16(len(frame)-HeaderSize))
	return frame
}

// ParseFrame parses one frame from the start of b and returns it with the
// number of bytes it took. Bytes after the frame are left to the caller.
// Body aliases b.
func ParseFrame(b []byte) (Frame, int, error) {
	if len(b) < HeaderSize {
		return Frame{}, 0, malformed("frame: short header")
	}
	if b[0] != Version {
		return Frame{}, 0, fmt.Errorf("%w frame: version %d, want %d", ErrMalformed, b[0], Version)
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n > MaxBody {
		return Frame{}, 0, fmt.Errorf("%w: body %d bytes, max %d", ErrTooLarge, n, MaxBody)
	}
	if len(b)-HeaderSize < n {
		return Frame{}, 0, malformed("frame: short body")
	}
	return Frame{Type: Type(b[1]), Body: b[HeaderSize : HeaderSize+n]}, HeaderSize + n, nil
}

// ReadFrame reads one frame from r. A body longer than maxBody (MaxBody if
// maxBody <= 0 or larger) is refused with ErrTooLarge before it is read. The
// returned Body is freshly allocated.
func ReadFrame(r io.Reader, maxBody int) (Frame, error) {
	if maxBody <= 0 || maxBody > MaxBody {
		maxBody = MaxBody
	}
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return Frame{}, malformed("frame: short header")
		}
		return Frame{}, err
	}
	if h[0] != Version {
		return Frame{}, fmt.Errorf("%w frame: version %d, want %d", ErrMalformed, h[0], Version)
	}
	n := int(binary.BigEndian.Uint16(h[2:4]))
	if n > maxBody {
		return Frame{}, fmt.Errorf("%w: body %d bytes, max %d", ErrTooLarge, n, maxBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return Frame{}, malformed("frame: short body")
		}
		return Frame{}, err
	}
	return Frame{Type: Type(h[1]), Body: body}, nil
}

// Message is a frame body that knows its type. All the message types of this
// package implement it.
type Message interface {
	// FrameType returns the frame type that carries the message.
	FrameType() Type
	// AppendBinary appends the message body (no frame header) to b.
	AppendBinary(b []byte) ([]byte, error)
}

// AppendMessage appends m as a complete frame to b.
func AppendMessage(b []byte, m Message) ([]byte, error) {
	start := len(b)
	b = append(b, Version, byte(m.FrameType()), 0, 0)
	b, err := m.AppendBinary(b)
	if err != nil {
		return b[:start], err
	}
	n := len(b) - start - HeaderSize
	if n > MaxBody {
		return b[:start], fmt.Errorf("%w: %s body %d bytes, max %d", ErrTooLarge, m.FrameType(), n, MaxBody)
	}
	binary.BigEndian.PutUint16(b[start+2:], uint16(n))
	return b, nil
}

// ParseMessage decodes f's body according to f.Type. Unknown types are an
// error wrapping ErrMalformed.
func ParseMessage(f Frame) (Message, error) {
	switch f.Type {
	case TypeRegister:
		return parse(ParseRegister, f.Body)
	case TypeRegistered:
		return parse(ParseRegistered, f.Body)
	case TypeLookup:
		return parse(ParseLookup, f.Body)
	case TypeLookupResult:
		return parse(ParseLookupResult, f.Body)
	case TypeNotFound:
		return &NotFound{}, nil
	case TypeSetHostname:
		return parse(ParseSetHostname, f.Body)
	case TypeTrustSend:
		return parse(ParseTrustSend, f.Body)
	case TypeDeliver:
		return parse(ParseDeliver, f.Body)
	case TypeAck:
		return parse(ParseAck, f.Body)
	case TypeOK:
		return &OK{}, nil
	case TypeError:
		return parse(ParseError, f.Body)
	case TypeConnect:
		return parse(ParseConnect, f.Body)
	case TypeIntroduce:
		return parse(ParseIntroduce, f.Body)
	case TypeNetworkCreate:
		return parse(ParseNetworkCreate, f.Body)
	case TypeNetworkInfo:
		return parse(ParseNetworkInfo, f.Body)
	case TypeNetworkSend:
		return parse(ParseNetworkSend, f.Body)
	case TypeNetworkMembers:
		return parse(ParseNetworkMembers, f.Body)
	case TypeNetworkState:
		return parse(ParseNetworkState, f.Body)
	case TypeNATReport:
		return parse(ParseNATReport, f.Body)
	case TypePing:
		return &Ping{}, nil
	}
	return nil, fmt.Errorf("%w: unknown frame type %s", ErrMalformed, f.Type)
}

func parse[T any, PT interface {
	*T
	Message
}](fn func([]byte) (T, error), body []byte) (Message, error) {
	v, err := fn(body)
	if err != nil {
		return nil, err
	}
	return PT(&v), nil
}

// Register is the first frame on the session stream: it binds the
// connection's key to an online session.
type Register struct {
	Hostname   string           // claimed if not empty (and free or already ours)
	LocalAddrs []netip.AddrPort // host candidates, at most MaxLocators
}

// FrameType implements Message.
func (*Register) FrameType() Type { return TypeRegister }

// AppendBinary implements Message.
func (m *Register) AppendBinary(b []byte) ([]byte, error) {
	b, err := appendHostname(b, m.Hostname, true)
	if err != nil {
		return b, err
	}
	return appendAddrPorts(b, m.LocalAddrs)
}

// ParseRegister parses a Register body.
func ParseRegister(body []byte) (Register, error) {
	r := reader{b: body}
	var m Register
	m.Hostname = r.hostname(true)
	m.LocalAddrs = r.addrPorts()
	return m, r.done("register")
}

// Registered answers Register.
type Registered struct {
	Addr      addressing.Addr // the agent's address (network 0)
	Reflexive netip.AddrPort  // the connection's remote address as the server sees it
	Time      time.Time       // the server's clock
	Hostname  string          // the hostname bound to the key now, "" if none
	// STUN2 is the server's second STUN address and Relay its relay
	// address, as service addresses: port 0 means the server has none, and
	// an invalid (zero) Addr means "on the host of the server address the
	// client dialled".
	STUN2 netip.AddrPort
	Relay netip.AddrPort
}

// FrameType implements Message.
func (*Registered) FrameType() Type { return TypeRegistered }

// AppendBinary implements Message.
func (m *Registered) AppendBinary(b []byte) ([]byte, error) {
	b, _ = m.Addr.AppendBinary(b)
	b, err := appendAddrPort(b, m.Reflexive)
	if err != nil {
		return b, err
	}
	b = appendTime(b, m.Time)
	if b, err = appendHostname(b, m.Hostname, true); err != nil {
		return b, err
	}
	b = appendServiceAddr(b, m.STUN2)
	return appendServiceAddr(b, m.Relay), nil
}

// ParseRegistered parses a Registered body.
func ParseRegistered(body []byte) (Registered, error) {
	r := reader{b: body}
	var m Registered
	m.Addr = r.addr()
	m.Reflexive = r.addrPort()
	m.Time = r.time()
	m.Hostname = r.hostname(true)
	m.STUN2 = r.serviceAddr()
	m.Relay = r.serviceAddr()
	return m, r.done("registered")
}

// Lookup asks for an agent's record by address or hostname.
type Lookup struct {
	Target addressing.Target
}

// FrameType implements Message.
func (*Lookup) FrameType() Type { return TypeLookup }

// AppendBinary implements Message.
func (m *Lookup) AppendBinary(b []byte) ([]byte, error) { return appendTarget(b, m.Target) }

// ParseLookup parses a Lookup body.
func ParseLookup(body []byte) (Lookup, error) {
	r := reader{b: body}
	m := Lookup{Target: r.target()}
	return m, r.done("lookup")
}

// LookupResult answers a Lookup for an agent the asker may see.
type LookupResult struct {
	Key      addressing.PublicKey
	Addr     addressing.Addr
	Hostname string
	Online   bool
	Locators []netip.AddrPort // reflexive first, then local; at most MaxLocators
}

// FrameType implements Message.
func (*LookupResult) FrameType() Type { return TypeLookupResult }

const flagOnline = 1 << 0

// AppendBinary implements Message.
func (m *LookupResult) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, m.Key[:]...)
	b, _ = m.Addr.AppendBinary(b)
	var flags byte
	if m.Online {
		flags |= flagOnline
	}
	b = append(b, flags)
	b, err := appendHostname(b, m.Hostname, true)
	if err != nil {
		return b, err
	}
	return appendAddrPorts(b, m.Locators)
}

// ParseLookupResult parses a LookupResult body.
func ParseLookupResult(body []byte) (LookupResult, error) {
	r := reader{b: body}
	var m LookupResult
	copy(m.Key[:], r.bytes(addressing.PublicKeySize))
	m.Addr = r.addr()
	m.Online = r.byte()&flagOnline != 0
	m.Hostname = r.hostname(true)
	m.Locators = r.addrPorts()
	return m, r.done("lookup result")
}

// NotFound answers a Lookup for an agent that does not exist or that the
// asker may not see; the two are indistinguishable on purpose.
type NotFound struct{}

// FrameType implements Message.
func (*NotFound) FrameType() Type { return TypeNotFound }

// AppendBinary implements Message; the body is empty.
func (*NotFound) AppendBinary(b []byte) ([]byte, error) { return b, nil }

// SetHostname claims a hostname for the connection's key ("" releases it).
type SetHostname struct {
	Hostname string
}

// FrameType implements Message.
func (*SetHostname) FrameType() Type { return TypeSetHostname }

// AppendBinary implements Message.
func (m *SetHostname) AppendBinary(b []byte) ([]byte, error) {
	return appendHostname(b, m.Hostname, true)
}

// ParseSetHostname parses a SetHostname body.
func ParseSetHostname(body []byte) (SetHostname, error) {
	r := reader{b: body}
	m := SetHostname{Hostname: r.hostname(true)}
	return m, r.done("set hostname")
}

// TrustSend asks the server to relay a signed trust message. Msg is opaque
// here (an encoded trustdb.Message).
type TrustSend struct {
	Msg []byte
}

// FrameType implements Message.
func (*TrustSend) FrameType() Type { return TypeTrustSend }

// AppendBinary implements Message.
func (m *TrustSend) AppendBinary(b []byte) ([]byte, error) { return appendTrustMsg(b, m.Msg) }

// ParseTrustSend parses a TrustSend body. Msg aliases body.
func ParseTrustSend(body []byte) (TrustSend, error) {
	r := reader{b: body}
	m := TrustSend{Msg: r.trustMsg()}
	return m, r.done("trust send")
}

// Deliver carries a mailbox message from the server to its recipient on the
// session stream.
type Deliver struct {
	ID  uint64 // mailbox id, echoed in Ack
	Msg []byte // encoded trustdb.Message
}

// FrameType implements Message.
func (*Deliver) FrameType() Type { return TypeDeliver }

// AppendBinary implements Message.
func (m *Deliver) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, m.ID)
	return appendTrustMsg(b, m.Msg)
}

// ParseDeliver parses a Deliver body. Msg aliases body.
func ParseDeliver(body []byte) (Deliver, error) {
	r := reader{b: body}
	var m Deliver
	m.ID = r.uint64()
	m.Msg = r.trustMsg()
	return m, r.done("deliver")
}

// Ack tells the server that a delivered mailbox message was handled and may
// be deleted.
type Ack struct {
	ID uint64
}

// FrameType implements Message.
func (*Ack) FrameType() Type { return TypeAck }

// AppendBinary implements Message.
func (m *Ack) AppendBinary(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.ID), nil
}

// ParseAck parses an Ack body.
func ParseAck(body []byte) (Ack, error) {
	r := reader{b: body}
	m := Ack{ID: r.uint64()}
	return m, r.done("ack")
}

// OK answers a request that succeeded and has nothing to say.
type OK struct{}

// FrameType implements Message.
func (*OK) FrameType() Type { return TypeOK }

// AppendBinary implements Message; the body is empty.
func (*OK) AppendBinary(b []byte) ([]byte, error) { return b, nil }

// Ping is the client's heartbeat on the session stream. The server does not
// answer it (QUIC acknowledges it); padded (Pad), it is large enough to draw
// a stateless reset from a server that restarted and lost the connection.
type Ping struct{}

// FrameType implements Message.
func (*Ping) FrameType() Type { return TypePing }

// AppendBinary implements Message; the body is empty (padding is ignored).
func (*Ping) AppendBinary(b []byte) ([]byte, error) { return b, nil }

// ErrorCode is a stable error code.
type ErrorCode uint16

// Error codes.
const (
	CodeBadRequest    ErrorCode = 1  // malformed or unexpected frame
	CodeRateLimited   ErrorCode = 2  // over a per-key or per-address rate
	CodeHostnameTaken ErrorCode = 3  // hostname bound to another key
	CodeNodeIDTaken   ErrorCode = 4  // another key already holds this NodeID
	CodeNotRegistered ErrorCode = 5  // request before Register on the session stream
	CodeTooLarge      ErrorCode = 6  // frame or message over the size limit
	CodeBadMessage    ErrorCode = 7  // trust message malformed, forged, too old, or not from the sender
	CodeReplay        ErrorCode = 8  // trust message already seen
	CodeNoRequest     ErrorCode = 9  // approve/reject without a matching pending request
	CodeLimit         ErrorCode = 10 // a capacity limit (agents, mailbox)
	CodeInternal      ErrorCode = 11 // server failure; retry later
	CodeNetworkTaken  ErrorCode = 12 // network name taken
)

var codeNames = [...]string{
	CodeBadRequest: "bad_request", CodeRateLimited: "rate_limited", CodeHostnameTaken: "hostname_taken",
	CodeNodeIDTaken: "nodeid_taken", CodeNotRegistered: "not_registered", CodeTooLarge: "too_large",
	CodeBadMessage: "bad_message", CodeReplay: "replay", CodeNoRequest: "no_request",
	CodeLimit: "limit", CodeInternal: "internal", CodeNetworkTaken: "network_taken",
}

// String returns the code's stable snake_case name, or "code_N".
func (c ErrorCode) String() string {
	if int(c) < len(codeNames) && codeNames[c] != "" {
		return codeNames[c]
	}
	return "code_" + strconv.Itoa(int(c))
}

// Error is an error answer. It implements error.
type Error struct {
	Code ErrorCode
	Text string // short, informational; at most MaxText bytes (longer is cut)
}

// FrameType implements Message.
func (*Error) FrameType() Type { return TypeError }

// AppendBinary implements Message.
func (m *Error) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	t := m.Text
	if len(t) > MaxText {
		t = t[:MaxText]
	}
	b = append(b, byte(len(t)))
	return append(b, t...), nil
}

// Error implements error: "rendezvous: <code>: <text>".
func (m *Error) Error() string {
	if m.Text == "" {
		return "rendezvous: " + m.Code.String()
	}
	return "rendezvous: " + m.Code.String() + ": " + m.Text
}

// ParseError parses an Error body.
func ParseError(body []byte) (Error, error) {
	r := reader{b: body}
	var m Error
	m.Code = ErrorCode(r.uint16())
	m.Text = string(r.str())
	return m, r.done("error")
}

// TokenSize is the size of an introduction's punch token.
const TokenSize = 16

// Sizes of a relay grant's session ID and secret.
const (
	RelaySessionSize = 8
	RelaySecretSize  = 16
)

// Connect asks the server to introduce the sender to Target, a peer that
// trusts it, for hole punching (and, if Relay, to open a relay session for
// the pair). Answered by Introduce, or NotFound for a peer that does not
// exist, does not trust the sender or is offline.
type Connect struct {
	Target     addressing.Addr
	Candidates []netip.AddrPort // the sender's current candidates, at most MaxLocators
	Relay      bool             // open a relay session for the pair
}

// FrameType implements Message.
func (*Connect) FrameType() Type { return TypeConnect }

const flagRelay = 1 << 0

// AppendBinary implements Message.
func (m *Connect) AppendBinary(b []byte) ([]byte, error) {
	if !m.Target.IsValid() {
		return b, errors.New("proto: connect: invalid target")
	}
	b, _ = m.Target.AppendBinary(b)
	b, err := appendAddrPorts(b, m.Candidates)
	if err != nil {
		return b, err
	}
	var flags byte
	if m.Relay {
		flags |= flagRelay
	}
	return append(b, flags), nil
}

// ParseConnect parses a Connect body.
func ParseConnect(body []byte) (Connect, error) {
	r := reader{b: body}
	var m Connect
	m.Target = r.addr()
	if r.err == nil && !m.Target.IsValid() {
		r.fail("target address")
	}
	m.Candidates = r.addrPorts()
	m.Relay = r.byte()&flagRelay != 0
	return m, r.done("connect")
}

// Introduce tells an agent how to reach a peer: the server answers a
// Connect with it (Initiator set) and pushes one on the peer's session
// stream (Initiator clear). Both carry the same Token.
type Introduce struct {
	Peer       addressing.PublicKey
	PeerAddr   addressing.Addr
	Candidates []netip.AddrPort // the peer's: reflexive first, at most MaxLocators
	Token      [TokenSize]byte
	Initiator  bool
	Relay      *RelayGrant // nil: no relay session
	PeerNAT    NATKind     // the peer's last reported NAT kind; absent (older server): NATUnknown
}

// RelayGrant is one side's share of a relay session.
type RelayGrant struct {
	Addr    netip.AddrPort // service address of the relay (see Registered)
	Session [RelaySessionSize]byte
	Secret  [RelaySecretSize]byte // this side's Bind key
	Side    uint8                 // 0 or 1
}

// FrameType implements Message.
func (*Introduce) FrameType() Type { return TypeIntroduce }

const (
	flagInitiator  = 1 << 0
	flagRelayGrant = 1 << 1
)

// AppendBinary implements Message.
func (m *Introduce) AppendBinary(b []byte) ([]byte, error) {
	if !m.PeerAddr.IsValid() {
		return b, errors.New("proto: introduce: invalid peer address")
	}
	b = append(b, m.Peer[:]...)
	b, _ = m.PeerAddr.AppendBinary(b)
	b, err := appendAddrPorts(b, m.Candidates)
	if err != nil {
		return b, err
	}
	b = append(b, m.Token[:]...)
	var flags byte
	if m.Initiator {
		flags |= flagInitiator
	}
	if m.Relay != nil {
		flags |= flagRelayGrant
	}
	b = append(b, flags)
	if g := m.Relay; g != nil {
		if g.Side > 1 || g.Addr.Port() == 0 {
			return b, fmt.Errorf("proto: relay grant: side %d, port %d", g.Side, g.Addr.Port())
		}
		b = appendServiceAddr(b, g.Addr)
		b = append(b, g.Session[:]...)
		b = append(b, g.Secret[:]...)
		b = append(b, g.Side)
	}
	return append(b, byte(m.PeerNAT)), nil
}

// ParseIntroduce parses an Introduce body.
func ParseIntroduce(body []byte) (Introduce, error) {
	r := reader{b: body}
	var m Introduce
	copy(m.Peer[:], r.bytes(addressing.PublicKeySize))
	m.PeerAddr = r.addr()
	if r.err == nil && !m.PeerAddr.IsValid() {
		r.fail("peer address")
	}
	m.Candidates = r.addrPorts()
	copy(m.Token[:], r.bytes(TokenSize))
	flags := r.byte()
	m.Initiator = flags&flagInitiator != 0
	if flags&flagRelayGrant != 0 && r.err == nil {
		g := &RelayGrant{Addr: r.serviceAddr()}
		copy(g.Session[:], r.bytes(RelaySessionSize))
		copy(g.Secret[:], r.bytes(RelaySecretSize))
		g.Side = r.byte()
		if r.err == nil && (g.Side > 1 || g.Addr.Port() == 0) {
			r.fail("relay grant")
		}
		if r.err == nil {
			m.Relay = g
		}
	}
	if r.err == nil && len(r.b) > 0 {
		m.PeerNAT = NATKind(r.byte())
	}
	return m, r.done("introduce")
}

// NATKind is what an agent learnt about the NAT in front of it (STUN to
// two server addresses). Unknown values are kept as they are and mean
// NATUnknown to their readers.
type NATKind uint8

// NAT kinds.
const (
	NATUnknown NATKind = 0 // not reported, or not classified
	NATNone    NATKind = 1 // public address
	NATEasy    NATKind = 2 // endpoint-independent mapping
	NATHard    NATKind = 3 // endpoint-dependent mapping ("symmetric")
	NATBlocked NATKind = 4 // no UDP gets out: the agent reaches the server over TCP, peers only through the relay
)

// NATReport tells the server the sender's NAT kind, which it hands to the
// peers it introduces the sender to (Introduce.PeerNAT) for as long as the
// session lasts. Answered by OK.
type NATReport struct {
	Kind NATKind
}

// FrameType implements Message.
func (*NATReport) FrameType() Type { return TypeNATReport }

// AppendBinary implements Message.
func (m *NATReport) AppendBinary(b []byte) ([]byte, error) { return append(b, byte(m.Kind)), nil }

// ParseNATReport parses a NATReport body.
func ParseNATReport(body []byte) (NATReport, error) {
	r := reader{b: body}
	m := NATReport{Kind: NATKind(r.byte())}
	return m, r.done("nat_report")
}

// --- field encoders ---

func appendHostname(b []byte, h string, optional bool) ([]byte, error) {
	if h == "" && optional {
		return append(b, 0), nil
	}
	if err := addressing.ValidateHostname(h); err != nil {
		return b, fmt.Errorf("proto: %w", err)
	}
	b = append(b, byte(len(h)))
	return append(b, h...), nil
}

func appendAddrPort(b []byte, ap netip.AddrPort) ([]byte, error) {
	a := ap.Addr()
	switch {
	case a.Is4():
		v := a.As4()
		b = append(b, 4)
		b = append(b, v[:]...)
	case a.Is6():
		v := a.As16()
		b = append(b, 6)
		b = append(b, v[:]...)
	default:
		return b, fmt.Errorf("proto: invalid address %v", ap)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port()), nil
}

// appendServiceAddr appends a service address: family 0 (no address: the
// host of the server address the client dialled) when ap's Addr is invalid.
func appendServiceAddr(b []byte, ap netip.AddrPort) []byte {
	if !ap.Addr().IsValid() {
		b = append(b, 0)
		return binary.BigEndian.AppendUint16(b, ap.Port())
	}
	b, _ = appendAddrPort(b, ap) // a valid Addr is 4 or 6
	return b
}

func appendAddrPorts(b []byte, aps []netip.AddrPort) ([]byte, error) {
	if len(aps) > MaxLocators {
		return b, fmt.Errorf("proto: %d addresses, max %d", len(aps), MaxLocators)
	}
	b = append(b, byte(len(aps)))
	for _, ap := range aps {
		var err error
		if b, err = appendAddrPort(b, ap); err != nil {
			return b, err
		}
	}
	return b, nil
}

func appendTime(b []byte, t time.Time) []byte {
	var v int64
	if !t.IsZero() {
		v = t.UnixNano()
	}
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

const (
	targetAddr     = 1
	targetHostname = 2
)

func appendTarget(b []byte, t addressing.Target) ([]byte, error) {
	if h, ok := t.Hostname(); ok {
		b = append(b, targetHostname)
		return appendHostname(b, h, false)
	}
	if a, ok := t.Addr(); ok {
		b = append(b, targetAddr)
		return a.AppendBinary(b)
	}
	return b, errors.New("proto: invalid target")
}

func appendTrustMsg(b, msg []byte) ([]byte, error) {
	if len(msg) == 0 || len(msg) > MaxTrustMessage {
		return b, fmt.Errorf("proto: trust message %d bytes, want 1-%d", len(msg), MaxTrustMessage)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...), nil
}

// --- field decoder ---

// reader decodes fields in order; the first failure sticks and later reads
// return zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = errors.New(what)
	}
	r.b = nil
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail("short")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	v := r.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) uint16() uint16 {
	v := r.bytes(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (r *reader) uint64() uint64 {
	v := r.bytes(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (r *reader) str() []byte { return r.bytes(int(r.byte())) }

func (r *reader) hostname(optional bool) string {
	h := string(r.str())
	if r.err != nil || (h == "" && optional) {
		return ""
	}
	if addressing.ValidateHostname(h) != nil {
		r.fail("hostname")
		return ""
	}
	return h
}

func (r *reader) addr() addressing.Addr {
	a, _ := addressing.AddrFromBinary(r.bytes(addressing.AddrSize))
	return a
}

func (r *reader) addrPort() netip.AddrPort {
	var a netip.Addr
	switch r.byte() {
	case 4:
		if v := r.bytes(4); v != nil {
			a = netip.AddrFrom4([4]byte(v))
		}
	case 6:
		if v := r.bytes(16); v != nil {
			a = netip.AddrFrom16([16]byte(v))
		}
	default:
		r.fail("address family")
	}
	port := r.uint16()
	if r.err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

// serviceAddr reads an ipport whose family may be 0 (no address).
func (r *reader) serviceAddr() netip.AddrPort {
	if r.err == nil && len(r.b) > 0 && r.b[0] == 0 {
		r.byte()
		port := r.uint16()
		if r.err != nil {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(netip.Addr{}, port)
	}
	return r.addrPort()
}

func (r *reader) addrPorts() []netip.AddrPort {
	n := int(r.byte())
	if n > MaxLocators {
		r.fail("address count")
	}
	if r.err != nil || n == 0 {
		return nil
	}
	aps := make([]netip.AddrPort, 0, n)
	for range n {
		ap := r.addrPort()
		if r.err != nil {
			return nil
		}
		aps = append(aps, ap)
	}
	return aps
}

func (r *reader) time() time.Time {
	v := int64(r.uint64())
	if r.err != nil || v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

func (r *reader) target() addressing.Target {
	switch r.byte() {
	case targetAddr:
		a := r.addr()
		if r.err == nil && !a.IsValid() {
			r.fail("target address")
		}
		return addressing.TargetAddr(a)
	case targetHostname:
		h := r.hostname(false)
		if r.err != nil {
			return addressing.Target{}
		}
		t, err := addressing.ParseTarget(h)
		if err != nil {
			r.fail("target hostname")
		}
		return t
	}
	r.fail("target kind")
	return addressing.Target{}
}

func (r *reader) trustMsg() []byte {
	n := int(r.uint16())
	if r.err == nil && (n == 0 || n > MaxTrustMessage) {
		r.fail("trust message length")
	}
	return r.bytes(n)
}

// done returns the first error; trailing bytes are ignored (forward
// compatibility).
func (r *reader) done(what string) error {
	if r.err != nil {
		return fmt.Errorf("%w %s: %v", ErrMalformed, what, r.err)
	}
	return nil
}
