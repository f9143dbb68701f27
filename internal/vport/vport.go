// Package vport is the wire format of agentnet's virtual ports: the header
// that opens every overlay stream, the one-byte answer the acceptor sends
// back, and the header of every overlay datagram. It imports only the
// standard library.
//
// Stream header, written by the opener as the first bytes of a QUIC stream:
//
//	+---------+-----------+-----------+
//	| version | dst port  | src port  |
//	| 1 byte  | 2 bytes BE| 2 bytes BE|
//	+---------+-----------+-----------+
//
// The version byte says how the acceptor answers. Version 1: with one status
// byte (StatusOK) before any payload, or by resetting the stream with an
// error code (see quicnode) when the port is closed. Version 2 (pipelined):
// with no status byte (the payload begins at once), or by the same reset;
// the opener learns of a refusal on its first read or write after the
// reset arrives. An acceptor refuses other versions.
//
// Datagram, the payload of one QUIC DATAGRAM frame:
//
//	+-----------+-----------+-------------------+
//	| dst port  | src port  | payload ...       |
//	| 2 bytes BE| 2 bytes BE| <= MaxPayload     |
//	+-----------+-----------+-------------------+
//
// Both travel inside QUIC's encryption: an observer of the wire sees QUIC only.
package vport

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the stream header version of a stream whose acceptor answers
// with a status byte.
const Version = 1

// VersionPipelined is the stream header version of a stream whose acceptor
// sends no status byte (StreamHeader.Pipelined).
const VersionPipelined = 2

// StreamHeaderLen is the length of a stream header.
const StreamHeaderLen = 5

// DatagramHeaderLen is the length of a datagram header.
const DatagramHeaderLen = 4

// DatagramBudget is the most bytes one overlay datagram (header included) may
// take: QUIC's datagram payload limit is ~1243 B right after the handshake and
// ~1160 B right after a path switch, so 1150 B always fits.
const DatagramBudget = 1150

// MaxPayload is the largest datagram payload an application may send.
const MaxPayload = DatagramBudget - DatagramHeaderLen

// StatusOK is the acceptor's answer when the port is open.
const StatusOK = 0x00

// ErrShort is returned when input is shorter than a header.
var ErrShort = errors.New("vport: short header")

// StreamHeader names the ports of a stream.
type StreamHeader struct {
	Dst, Src uint16
	// Pipelined (version 2): the opener does not wait for a status byte, so
	// the acceptor sends none.
	Pipelined bool
}

// AppendStreamHeader appends the encoding of h to b.
func AppendStreamHeader(b []byte, h StreamHeader) []byte {
	v := byte(Version)
	if h.Pipelined {
		v = VersionPipelined
	}
	b = append(b, v)
	b = binary.BigEndian.AppendUint16(b, h.Dst)
	return binary.BigEndian.AppendUint16(b, h.Src)
}

// ParseStreamHeader decodes a stream header from the first StreamHeaderLen
// bytes of b.
func ParseStreamHeader(b []byte) (StreamHeader, error) {
	if len(b) < StreamHeaderLen {
		return StreamHeader{}, ErrShort
	}
	if b[0] != Version && b[0] != VersionPipelined {
		return StreamHeader{}, fmt.Errorf("vport: unsupported stream header version %d", b[0])
	}
	return StreamHeader{Dst: binary.BigEndian.Uint16(b[1:]), Src: binary.BigEndian.Uint16(b[3:]), Pipelined: b[0] == VersionPipelined}, nil
}

// AppendDatagram appends a datagram carrying payload from port src to port
// dst. It does not check the payload size; callers check against MaxPayload.
func AppendDatagram(b []byte, dst, src uint16, payload []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, dst)
	b = binary.BigEndian.AppendUint16(b, src)
	return append(b, payload...)
}

// ParseDatagram splits a datagram into its ports and payload. The payload
// aliases b.
func ParseDatagram(b []byte) (dst, src uint16, payload []byte, err error) {
	if len(b) < DatagramHeaderLen {
		return 0, 0, nil, ErrShort
	}
	if len(b) > DatagramBudget+256 {
		// Our peers never send more than DatagramBudget; tolerate a little
		// for future versions, refuse the absurd.
		return 0, 0, nil, fmt.Errorf("vport: datagram of %d bytes too large", len(b))
	}
	return binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:]), b[DatagramHeaderLen:], nil
}
