package paths

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// NATKind is what the node learnt about the NAT in front of it.
type NATKind string

// NAT kinds, from STUN binding requests to two rendezvous addresses.
const (
	NATUnknown NATKind = "unknown" // no answer yet, or only one STUN address
	NATNone    NATKind = "none"    // the socket's own address is public
	NATEasy    NATKind = "easy"    // endpoint-independent mapping: hole punching works
	NATHard    NATKind = "hard"    // endpoint-dependent mapping (symmetric): direct only against open peers
	NATBlocked NATKind = "blocked" // no UDP gets out: the rendezvous over TCP, peers through the relay
)

// NATInfo is the node's view of its NAT.
type NATInfo struct {
	Kind    NATKind
	Mapped  netip.AddrPort   // reflexive address towards the rendezvous
	Mapped2 netip.AddrPort   // reflexive address towards the second STUN address
	Local   []netip.AddrPort // the socket's host addresses
	Checked time.Time
}

// NAT returns what the last STUN check found.
func (m *Manager) NAT() NATInfo {
	m.natMu.Lock()
	defer m.natMu.Unlock()
	return m.nat
}

// natReportEvery re-reports an unchanged NAT kind (a new rendezvous
// session starts without one).
const natReportEvery = 30 * time.Second

// stunPadding makes requests at least as large as the answers, which the
// rendezvous requires (it never amplifies).
const stunPadding = "agentnet/1 stun binding request padding"

// stunWaiters routes STUN answers read by nonQUICLoop to their requests.
type stunWaiters struct {
	mu sync.Mutex
	m  map[[stun.TransactionIDSize]byte]chan netip.AddrPort
}

func (w *stunWaiters) add(id [stun.TransactionIDSize]byte) chan netip.AddrPort {
	ch := make(chan netip.AddrPort, 1)
	w.mu.Lock()
	if w.m == nil {
		w.m = make(map[[stun.TransactionIDSize]byte]chan netip.AddrPort)
	}
	w.m[id] = ch
	w.mu.Unlock()
	return ch
}

func (w *stunWaiters) remove(id [stun.TransactionIDSize]byte) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

// handleSTUN delivers a binding success to its waiter.
func (m *Manager) handleSTUN(b []byte) {
	msg := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := msg.Decode(); err != nil || msg.Type != stun.BindingSuccess {
		return
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(msg); err != nil {
		return
	}
	ip, ok := netip.AddrFromSlice(xor.IP)
	if !ok {
		return
	}
	ap := netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
	m.stun.mu.Lock()
	ch := m.stun.m[msg.TransactionID]
	m.stun.mu.Unlock()
	if ch != nil {
		select {
		case ch <- ap:
		default:
		}
	}
}

// stunRequest asks server for our reflexive address, retrying a few times.
func (m *Manager) stunRequest(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	msg, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewSoftware(stunPadding), stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ch := m.stun.add(msg.TransactionID)
	defer m.stun.remove(msg.TransactionID)
	to := net.UDPAddrFromAddrPort(server)
	for i := 0; i < 4; i++ {
		if _, err := m.tr.WriteTo(msg.Raw, to); err != nil {
			return netip.AddrPort{}, err
		}
		t := time.NewTimer(time.Duration(200*(i+1)) * time.Millisecond)
		select {
		case ap := <-ch:
			t.Stop()
			return ap, nil
		case <-ctx.Done():
			t.Stop()
			return netip.AddrPort{}, ctx.Err()
		case <-t.C:
		}
	}
	return netip.AddrPort{}, fmt.Errorf("paths: no STUN answer from %s", server)
}

// CheckNAT classifies the NAT with binding requests to the rendezvous's two
// STUN addresses.
func (m *Manager) CheckNAT(ctx context.Context) (NATInfo, error) {
	rdv := m.rendezvous()
	if rdv == nil {
		return NATInfo{}, errors.New("paths: no rendezvous to ask")
	}
	if m.onTCP() {
		// No UDP gets out: nothing to measure, but peers must know that
		// only the relay reaches us (they skip punching).
		info := NATInfo{Kind: NATBlocked, Checked: time.Now()}
		m.natMu.Lock()
		m.nat = info
		m.natMu.Unlock()
		m.reportNAT(ctx, rdv, info.Kind)
		return info, nil
	}
	main, alt := rdv.STUNAddrs()
	if !main.IsValid() {
		return NATInfo{}, errors.New("paths: rendezvous address unknown")
	}
	info := NATInfo{Kind: NATUnknown, Local: LocalCandidates(m.conn), Checked: time.Now()}
	var err1, err2 error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		info.Mapped, err1 = m.stunRequest(ctx, main)
	}()
	if alt.IsValid() {
		info.Mapped2, err2 = m.stunRequest(ctx, alt)
	}
	wg.Wait()
	if err1 != nil {
		return info, err1
	}
	switch {
	case containsAddrPort(info.Local, info.Mapped):
		info.Kind = NATNone
	case err2 != nil || !info.Mapped2.IsValid():
		info.Kind = NATUnknown
	case info.Mapped == info.Mapped2:
		info.Kind = NATEasy
	default:
		info.Kind = NATHard
	}
	m.natMu.Lock()
	m.nat = info
	m.natMu.Unlock()
	m.reportNAT(ctx, rdv, info.Kind)
	return info, nil
}

// reportNAT tells the rendezvous our NAT kind when it changed or the last
// report is old: peers need it to pick birthday punching (birthday.go) or,
// for NATBlocked, to go to the relay at once.
func (m *Manager) reportNAT(ctx context.Context, rdv Rendezvous, kind NATKind) {
	m.natMu.Lock()
	report := kind != m.natReported || time.Since(m.natReportAt) > natReportEvery
	m.natMu.Unlock()
	if !report {
		return
	}
	if err := rdv.ReportNAT(ctx, string(kind)); err == nil {
		m.natMu.Lock()
		m.natReported, m.natReportAt = kind, time.Now()
		m.natMu.Unlock()
	}
}
