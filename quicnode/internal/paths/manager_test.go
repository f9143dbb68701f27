package paths

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestLastAddressNeedsNoRendezvous: with no rendezvous at all, a peer whose
// last address is known is dialled there (phase 1), and the link says so.
func TestLastAddressNeedsNoRendezvous(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rtt = 20 * time.Millisecond
		tn := &testNet{Latency: rtt / 2}
		a, ha := newTestManager(t, tn, "10.0.0.1:1000")
		b, hb := newTestManager(t, tn, "10.0.0.2:2000")
		trustPair(ha, hb)
		bKey := hb.id.PublicKey()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := a.Link(ctx, bKey)
		require.ErrorIs(t, err, ErrUnreachable, "no address known, no rendezvous")

		a.setHint(bKey, b.LocalAddr())
		l, err := a.Link(ctx, bKey)
		require.NoError(t, err)
		require.Equal(t, PhaseLastAddr, l.Found)
		require.Equal(t, KindDirect, l.Kind)
		require.NoError(t, echo(ctx, l, "hello"))
		ls := a.Links()
		require.Len(t, ls, 1)
		require.Equal(t, PhaseLastAddr, ls[0].Found)
		// The handshake only (1 RTT), exactly, on the simulated network:
		// the dial does not wait for the welcome, which would leave the
		// acceptor once the client's Finished has arrived (1 more RTT).
		require.Equal(t, rtt, ls[0].Setup)
		// b sees the incoming link, and now knows where a is.
		require.Eventually(t, func() bool { return len(b.Links()) == 1 }, time.Second, time.Millisecond)
		require.Equal(t, PhaseIncoming, b.Links()[0].Found)
		hint, ok := b.hint(ha.id.PublicKey())
		require.True(t, ok)
		require.Equal(t, a.LocalAddr().String(), hint.String())
	})
}

// TestDoubleDialBothSidesAgree: when one side's dials land twice at once
// (say a plain and a punched one), the dialer keeps the first and closes
// the second, and the acceptor must not close the one the dialer kept.
func TestDoubleDialBothSidesAgree(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := &testNet{}
		a, ha := newTestManager(t, tn, "10.0.0.1:1000")
		b, hb := newTestManager(t, tn, "10.0.0.2:2000")
		trustPair(ha, hb)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		addr := unmap(b.LocalAddr().(*net.UDPAddr).AddrPort())
		c1, err := a.dialOne(ctx, a.tr, hb.id.PublicKey(), addr, true)
		require.NoError(t, err)
		c2, err := a.dialOne(ctx, a.tr, hb.id.PublicKey(), addr, true)
		require.NoError(t, err)
		l1, err := a.addLink(c1, hb.id.PublicKey(), KindDirect, true, PhaseDirect, 0)
		require.NoError(t, err)
		l2, err := a.addLink(c2, hb.id.PublicKey(), KindDirect, true, PhaseDirect, 0)
		require.NoError(t, err)
		require.Same(t, l1, l2, "the dialer keeps its first link")

		time.Sleep(200 * time.Millisecond)
		require.True(t, l1.Alive(), "the acceptor closed the link the dialer kept")
		require.NoError(t, echo(ctx, l1, "x"))
		lb, err := b.Link(ctx, ha.id.PublicKey())
		require.NoError(t, err)
		require.NoError(t, echo(ctx, lb, "y"))
		require.True(t, l1.Alive())
		require.Len(t, a.Links(), 1)
		require.Len(t, b.Links(), 1)
	})
}

// TestDeadPathClosesOnTime: a link that hears nothing while it sends is
// closed PathDead ± livenessPeriod after the last packet it heard, long
// before QUIC's idle timeout; a link idle both ways is left alone.
func TestDeadPathClosesOnTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := &testNet{Latency: 5 * time.Millisecond}
		a, ha := newTestManager(t, tn, "10.0.0.1:1000")
		b, hb := newTestManager(t, tn, "10.0.0.2:2000")
		trustPair(ha, hb)
		a.setHint(hb.id.PublicKey(), b.LocalAddr())
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := a.Link(ctx, hb.id.PublicKey())
		require.NoError(t, err)
		require.NoError(t, echo(ctx, l, "before"))

		// Idle both ways for longer than PathDead: nothing to judge.
		time.Sleep(3 * PathDead)
		require.True(t, l.Alive(), "an idle link is not dead")
		require.NoError(t, echo(ctx, l, "still there"))

		// Cut the path, then keep sending: the link must close on time.
		tn.setCut(a.LocalAddr(), b.LocalAddr(), true)
		cutAt := time.Now()
		s, err := l.Conn.OpenStreamSync(ctx)
		require.NoError(t, err)
		writer := make(chan struct{})
		go func() {
			defer close(writer)
			for {
				if _, err := s.Write(make([]byte, 1000)); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		<-l.Conn.Context().Done()
		silent := time.Since(cutAt)
		<-writer
		require.GreaterOrEqual(t, silent, PathDead-livenessPeriod, "closed too early")
		require.LessOrEqual(t, silent, PathDead+livenessPeriod, "closed too late")
		require.Equal(t, uint64(1), a.Stats().PathsDead)
		var ae *quic.ApplicationError
		require.ErrorAs(t, context.Cause(l.Conn.Context()), &ae)
		require.Equal(t, CodePathDead, ae.ErrorCode)
	})
}

// TestCloseUnderLoadWaitsForEverything: Close during concurrent dials (to
// a reachable peer and to one that never answers), open streams and
// datagrams returns only after every goroutine of the manager has ended
// (synctest.Test fails if any goroutine of the bubble is left).
func TestCloseUnderLoadWaitsForEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := &testNet{Latency: 2 * time.Millisecond}
		a, ha := newTestManager(t, tn, "10.0.0.1:1000")
		b, hb := newTestManager(t, tn, "10.0.0.2:2000")
		_, hc := newTestManager(t, tn, "10.0.0.3:3000")
		trustPair(ha, hb)
		trustPair(ha, hc)
		a.setHint(hb.id.PublicKey(), b.LocalAddr())
		// c's address is cut from a: its dials hang until the timeout.
		tn.setCut(a.LocalAddr(), mustUDP("10.0.0.3:3000"), true)
		a.setHint(hc.id.PublicKey(), mustUDP("10.0.0.3:3000"))

		ctx := context.Background()
		l, err := a.Link(ctx, hb.id.PublicKey())
		require.NoError(t, err)
		done := make(chan struct{})
		for i := 0; i < 20; i++ {
			go func() {
				defer func() { done <- struct{}{} }()
				for {
					if err := echo(ctx, l, "load"); err != nil {
						return
					}
				}
			}()
			go func() {
				defer func() { done <- struct{}{} }()
				a.Link(ctx, hc.id.PublicKey())
			}()
		}
		time.Sleep(50 * time.Millisecond)
		a.Close(CodeClosing, "closing under load")
		for i := 0; i < 40; i++ {
			<-done
		}
		_, err = a.Link(ctx, hb.id.PublicKey())
		require.ErrorIs(t, err, net.ErrClosed)
	})
}

func mustUDP(s string) *net.UDPAddr {
	return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s))
}
