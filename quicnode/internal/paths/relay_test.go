package paths

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type readResult struct {
	n   int
	err error
}

func startRead(rc *relayConn) chan readResult {
	done := make(chan readResult, 1)
	go func() {
		n, _, err := rc.ReadFrom(make([]byte, 2048))
		done <- readResult{n, err}
	}()
	return done
}

func newTestRelayConn(t *testing.T) *relayConn {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { udp.Close() })
	return newRelayConn(udp)
}

// TestRelayConnCloseDeadlineNotLost: quic-go's Transport.Close wakes its read
// loop with SetReadDeadline(now). A tunnel frame's interrupt pending at that
// moment must not swallow it (before the fix ReadFrom cleared the deadline
// and blocked for good, and Node.Close hung in Transport.Close).
func TestRelayConnCloseDeadlineNotLost(t *testing.T) {
	rc := newTestRelayConn(t)
	rc.tunnelFrame([]byte{0xff, 1, 2, 3}) // a frame of no session: an interrupt, then dropped
	rc.SetReadDeadline(time.Now())        // what Transport.Close does
	done := startRead(rc)
	select {
	case r := <-done:
		require.True(t, errors.Is(r.err, os.ErrDeadlineExceeded), "%v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("ReadFrom lost the user's deadline behind a tunnel interrupt")
	}
	require.EqualValues(t, 1, rc.dropped.Load())
}

// TestRelayConnInterruptIsNotAnError: a tunnel frame wakes a blocked read,
// which drains the queue and reads on; only the user's deadline ends it.
func TestRelayConnInterruptIsNotAnError(t *testing.T) {
	rc := newTestRelayConn(t)
	done := startRead(rc)
	rc.tunnelFrame([]byte{0xff, 1, 2, 3})
	require.Eventually(t, func() bool { return rc.dropped.Load() == 1 }, 10*time.Second, time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("ReadFrom returned on an interrupt: %v", r.err)
	default:
	}
	rc.SetReadDeadline(time.Now())
	select {
	case r := <-done:
		require.True(t, errors.Is(r.err, os.ErrDeadlineExceeded), "%v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the user's deadline did not end the read")
	}
	// The deadline was the user's: clearing it makes the conn readable again.
	rc.SetReadDeadline(time.Time{})
	done = startRead(rc)
	rc.tunnelFrame([]byte{0xff, 1, 2, 3})
	require.Eventually(t, func() bool { return rc.dropped.Load() == 2 }, 10*time.Second, time.Millisecond)
	rc.SetReadDeadline(time.Unix(1, 0))
	r := <-done
	require.True(t, errors.Is(r.err, os.ErrDeadlineExceeded), "%v", r.err)
}
