package paths

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// restartPair makes two hosts, the one to be restarted first, whose NodeID
// is lower than the survivor's when restartedLower.
func restartPair(t *testing.T, restartedLower bool) (restarted, survivor *testHost) {
	for {
		r, s := newTestHost(t), newTestHost(t)
		if (r.id.PublicKey().NodeID().Compare(s.id.PublicKey().NodeID()) < 0) == restartedLower {
			return r, s
		}
	}
}

// TestRestartedPeer: a peer that crashed and came back (same identity,
// within 0.2 s) is reachable again at once, whichever side speaks first
// and whichever way the tie-break goes: the survivor's stale link draws a
// stateless reset (same port) or is found silent when the peer dials anew
// (new port), instead of lingering until PathDead.
func TestRestartedPeer(t *testing.T) {
	const rtt = 10 * time.Millisecond
	for _, tc := range []struct {
		name           string
		restartedLower bool
		newPort        bool
		restartedDials bool // else the survivor reuses its link first
	}{
		{"restarted_dials/restarted_lower", true, false, true},
		{"restarted_dials/restarted_higher", false, false, true},
		{"restarted_dials/new_port/restarted_higher", false, true, true},
		{"survivor_dials/restarted_lower", true, false, false},
		{"survivor_dials/restarted_higher", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tn := &testNet{Latency: rtt / 2}
				hr, hs := restartPair(t, tc.restartedLower)
				trustPair(hr, hs)
				s := startTestManager(t, tn, "10.0.0.1:1000", hs)
				r := startTestManager(t, tn, "10.0.0.2:2000", hr)
				rKey, sKey := hr.id.PublicKey(), hs.id.PublicKey()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()

				// The survivor dialled the link, so it is the one a
				// tie-break may keep.
				s.setHint(rKey, r.LocalAddr())
				old, err := s.Link(ctx, rKey)
				require.NoError(t, err)
				require.NoError(t, echo(ctx, old, "before"))

				crash(tn, r, s.LocalAddr())
				time.Sleep(200 * time.Millisecond)
				require.True(t, old.Alive(), "the crash told the survivor nothing")
				addr := "10.0.0.2:2000"
				if tc.newPort {
					addr = "10.0.0.2:2001"
				}
				r2 := startTestManager(t, tn, addr, hr)
				s.setHint(rKey, r2.LocalAddr())
				r2.setHint(sKey, s.LocalAddr())

				start := time.Now()
				if tc.restartedDials {
					l, err := r2.Link(ctx, sKey)
					require.NoError(t, err, "the restarted peer cannot reach the survivor")
					require.NoError(t, echo(ctx, l, "after"))
					took := time.Since(start)
					t.Logf("restarted peer's dial took %v", took)
					require.Less(t, took, time.Second, "the stale link held the restarted peer off")
				} else {
					l, err := s.Link(ctx, rKey)
					require.NoError(t, err)
					require.Same(t, old, l, "the survivor does not know yet")
					echoCtx, cancelEcho := context.WithTimeout(ctx, 10*time.Second)
					require.Error(t, echo(echoCtx, l, "lost"))
					cancelEcho()
					dead := time.Since(start)
					t.Logf("stale link died %v after its reuse", dead)
					require.Less(t, dead, 5*rtt, "the stale link should draw a stateless reset")
					<-old.Conn.Context().Done()
					var se *quic.StatelessResetError
					require.ErrorAs(t, context.Cause(old.Conn.Context()), &se)
					l, err = s.Link(ctx, rKey)
					require.NoError(t, err)
					require.NoError(t, echo(ctx, l, "after"))
					require.Less(t, time.Since(start), time.Second)
				}
				require.False(t, old.Alive(), "the stale link is gone")
				require.Eventually(t, func() bool { return len(s.Links()) == 1 && len(r2.Links()) == 1 }, time.Second, time.Millisecond)
			})
		})
	}
}
