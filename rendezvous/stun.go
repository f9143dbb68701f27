package rendezvous

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
	"github.com/quic-go/quic-go"
)

// maxSTUNRequest is the read buffer of the STUN loops; a binding request is
// far smaller.
const maxSTUNRequest = 1500

// stunResponder answers STUN binding requests with the source address it
// sees (XOR-MAPPED-ADDRESS). It never amplifies: an answer larger than its
// request is not sent. Everything it does not answer is dropped and counted.
// Each loop owns its scratch messages; the responder itself is safe for
// concurrent use.
type stunResponder struct {
	limit *rateLimiter[netip.Addr] // per source address (IPv6: /64)

	answered     atomic.Uint64
	dropped      atomic.Uint64 // every packet not answered, including the two below
	droppedSize  atomic.Uint64 // binding requests smaller than their answer
	droppedRated atomic.Uint64 // binding requests over the source's rate
}

// answer returns the answer to the datagram b from from, built in resp, or
// nil when b is to be dropped (counted). req is scratch for decoding b.
func (r *stunResponder) answer(req, resp *stun.Message, b []byte, from netip.AddrPort, now time.Time) []byte {
	out := r.build(req, resp, b, from, now)
	if out == nil {
		r.dropped.Add(1)
		return nil
	}
	r.answered.Add(1)
	return out
}

func (r *stunResponder) build(req, resp *stun.Message, b []byte, from netip.AddrPort, now time.Time) []byte {
	if !stun.IsMessage(b) {
		return nil
	}
	req.Raw = b // read only, and only until this call returns
	if req.Decode() != nil || req.Type != stun.BindingRequest {
		return nil
	}
	fingerprint := req.Contains(stun.AttrFingerprint)
	if fingerprint && stun.Fingerprint.Check(req) != nil {
		return nil
	}
	ip := from.Addr().Unmap()
	var xor stun.XORMappedAddress
	if ip.Is4() {
		a := ip.As4()
		xor.IP = a[:]
	} else {
		a := ip.As16()
		xor.IP = a[:]
	}
	xor.Port = int(from.Port())
	setters := []stun.Setter{stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess, &xor}
	if fingerprint { // answer in kind: a client that demultiplexes by it expects it
		setters = append(setters, stun.Fingerprint)
	}
	if resp.Build(setters...) != nil {
		return nil
	}
	if len(resp.Raw) > len(b) {
		r.droppedSize.Add(1)
		return nil
	}
	if !r.limit.allow(addrKey(ip), now) {
		r.droppedRated.Add(1)
		return nil
	}
	return resp.Raw
}

// stunMainLoop answers the STUN packets that arrive beside QUIC on the main
// socket. It ends when the transport closes or the server is closed.
func (s *Server) stunMainLoop(tr *quic.Transport) {
	defer s.wg.Done()
	buf := make([]byte, maxSTUNRequest)
	var req, resp stun.Message
	for {
		n, addr, err := tr.ReadNonQUICPacket(s.ctx, buf)
		if err != nil {
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			s.stun.dropped.Add(1)
			continue
		}
		if out := s.stun.answer(&req, &resp, buf[:n], ua.AddrPort(), time.Now()); out != nil {
			tr.WriteTo(out, addr)
		}
	}
}

// stunAltLoop answers STUN on the second STUN socket until the server is
// closed (Close interrupts the read with a deadline).
func (s *Server) stunAltLoop(conn *net.UDPConn) {
	defer s.wg.Done()
	buf := make([]byte, maxSTUNRequest)
	var req, resp stun.Message
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond) // a transient error; do not spin
			continue
		}
		if out := s.stun.answer(&req, &resp, buf[:n], from, time.Now()); out != nil {
			conn.WriteToUDPAddrPort(out, from)
		}
	}
}
