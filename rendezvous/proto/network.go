package proto

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/agentnet/agentnet/addressing"
)

// MaxNetworkDoc is the largest network document (an encoded network.Join,
// Leave or Remove) a frame carries.
const MaxNetworkDoc = 1 << 10

// NetworkCreate asks the server to create a network owned by the sender.
// Answered by NetworkInfo, or Error (network_taken, limit).
type NetworkCreate struct {
	Name string // hostname rules
}

// FrameType implements Message.
func (*NetworkCreate) FrameType() Type { return TypeNetworkCreate }

// AppendBinary implements Message.
func (m *NetworkCreate) AppendBinary(b []byte) ([]byte, error) {
	return appendHostname(b, m.Name, false)
}

// ParseNetworkCreate parses a NetworkCreate body.
func ParseNetworkCreate(body []byte) (NetworkCreate, error) {
	r := reader{b: body}
	m := NetworkCreate{Name: r.hostname(false)}
	return m, r.done("network create")
}

// NetworkInfo names a network: the answer to NetworkCreate and to a Join
// sent with NetworkSend.
type NetworkInfo struct {
	ID    addressing.NetworkID // never 0
	Name  string
	Owner addressing.PublicKey
}

// FrameType implements Message.
func (*NetworkInfo) FrameType() Type { return TypeNetworkInfo }

// AppendBinary implements Message.
func (m *NetworkInfo) AppendBinary(b []byte) ([]byte, error) {
	if m.ID == 0 {
		return b, errors.New("proto: network info: network 0")
	}
	b = binary.BigEndian.AppendUint16(b, uint16(m.ID))
	b, err := appendHostname(b, m.Name, false)
	if err != nil {
		return b, err
	}
	return append(b, m.Owner[:]...), nil
}

// ParseNetworkInfo parses a NetworkInfo body.
func ParseNetworkInfo(body []byte) (NetworkInfo, error) {
	r := reader{b: body}
	var m NetworkInfo
	m.ID = r.networkID()
	m.Name = r.hostname(false)
	copy(m.Owner[:], r.bytes(addressing.PublicKeySize))
	return m, r.done("network info")
}

// NetworkSend carries a signed network document (Join, Leave, Remove) from
// its signer to the server. A Join is answered by NetworkInfo, a Leave or
// Remove by OK; NotFound if the network (or, for Leave and Remove, the
// membership) does not exist; Error (bad_message, replay, limit) otherwise.
type NetworkSend struct {
	Doc []byte // opaque here
}

// FrameType implements Message.
func (*NetworkSend) FrameType() Type { return TypeNetworkSend }

// AppendBinary implements Message.
func (m *NetworkSend) AppendBinary(b []byte) ([]byte, error) { return appendDoc(b, m.Doc) }

// ParseNetworkSend parses a NetworkSend body. Doc aliases body.
func ParseNetworkSend(body []byte) (NetworkSend, error) {
	r := reader{b: body}
	m := NetworkSend{Doc: r.doc()}
	return m, r.done("network send")
}

// NetworkMembers asks for a network's membership documents. A member gets a
// full list (NetworkState frames, see there); anyone else the NotFound frame,
// the same bytes as for a network that does not exist.
type NetworkMembers struct {
	ID addressing.NetworkID
}

// FrameType implements Message.
func (*NetworkMembers) FrameType() Type { return TypeNetworkMembers }

// AppendBinary implements Message.
func (m *NetworkMembers) AppendBinary(b []byte) ([]byte, error) {
	if m.ID == 0 {
		return b, errors.New("proto: network members: network 0")
	}
	return binary.BigEndian.AppendUint16(b, uint16(m.ID)), nil
}

// ParseNetworkMembers parses a NetworkMembers body.
func ParseNetworkMembers(body []byte) (NetworkMembers, error) {
	r := reader{b: body}
	m := NetworkMembers{ID: r.networkID()}
	return m, r.done("network members")
}

// NetworkState carries signed membership documents of one network. A full
// list (the answer to NetworkMembers, and what the server pushes after
// Register) spans one or more frames in a row: the first has First set, the
// last has Last set (one frame can have both); it holds the Join of every
// current member and the last Leave or Remove of former ones, and a
// receiver may drop members it does not name. A frame with neither flag,
// pushed on the session stream, is a change: documents to apply.
type NetworkState struct {
	ID    addressing.NetworkID
	Name  string
	Owner addressing.PublicKey
	First bool
	Last  bool
	Docs  [][]byte // each at most MaxNetworkDoc bytes
}

// FrameType implements Message.
func (*NetworkState) FrameType() Type { return TypeNetworkState }

const (
	flagFirst = 1 << 0
	flagLast  = 1 << 1
)

// AppendBinary implements Message.
func (m *NetworkState) AppendBinary(b []byte) ([]byte, error) {
	info := NetworkInfo{ID: m.ID, Name: m.Name, Owner: m.Owner}
	b, err := info.AppendBinary(b)
	if err != nil {
		return b, err
	}
	var flags byte
	if m.First {
		flags |= flagFirst
	}
	if m.Last {
		flags |= flagLast
	}
	b = append(b, flags)
	if len(m.Docs) > 0xffff {
		return b, errors.New("proto: network state: too many documents")
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Docs)))
	for _, d := range m.Docs {
		if b, err = appendDoc(b, d); err != nil {
			return b, err
		}
	}
	return b, nil
}

// ParseNetworkState parses a NetworkState body. Docs alias body.
func ParseNetworkState(body []byte) (NetworkState, error) {
	r := reader{b: body}
	var m NetworkState
	m.ID = r.networkID()
	m.Name = r.hostname(false)
	copy(m.Owner[:], r.bytes(addressing.PublicKeySize))
	flags := r.byte()
	m.First, m.Last = flags&flagFirst != 0, flags&flagLast != 0
	n := int(r.uint16())
	for i := 0; i < n && r.err == nil; i++ {
		if d := r.doc(); r.err == nil {
			m.Docs = append(m.Docs, d)
		}
	}
	return m, r.done("network state")
}

func appendDoc(b, doc []byte) ([]byte, error) {
	if len(doc) == 0 || len(doc) > MaxNetworkDoc {
		return b, fmt.Errorf("proto: network document %d bytes, want 1-%d", len(doc), MaxNetworkDoc)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(doc)))
	return append(b, doc...), nil
}

func (r *reader) doc() []byte {
	n := int(r.uint16())
	if r.err == nil && (n == 0 || n > MaxNetworkDoc) {
		r.fail("network document length")
	}
	return r.bytes(n)
}

func (r *reader) networkID() addressing.NetworkID {
	id := addressing.NetworkID(r.uint16())
	if r.err == nil && id == 0 {
		r.fail("network 0")
	}
	return id
}
