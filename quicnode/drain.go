package quicnode

import (
	"time"

	"github.com/quic-go/quic-go"
)

// CloseDrain bounds how long Close waits for data queued on streams to
// reach the peers before it closes the connections (see Node.Close).
const CloseDrain = 2 * time.Second

// drainPoll is how often the drain looks at the connections.
const drainPoll = 5 * time.Millisecond

// drain waits, until deadline, for every peer connection to go quiet: to
// send nothing for a quiet window of twice its probe timeout (smoothed RTT
// + 4 × its deviation + QUIC's 25 ms ack delay). While stream data or a
// FIN is queued or unacknowledged, quic-go keeps sending it (and
// retransmits it at the probe timeout), so a connection quiet for that
// long has had everything written to it acknowledged, or is blocked by
// the peer's flow control (a reader that does not read), which the drain
// does not wait out. It reports whether every connection went quiet.
func (n *Node) drain(deadline time.Time) bool {
	if n.paths == nil {
		return true
	}
	type watch struct {
		c      *quic.Conn
		sent   uint64
		change time.Time
	}
	var ws []watch
	now := time.Now()
	for _, k := range n.paths.Connected() {
		if l := n.paths.Best(k); l != nil {
			ws = append(ws, watch{c: l.Conn, sent: l.Conn.ConnectionStats().BytesSent, change: now})
		}
	}
	for len(ws) > 0 {
		now = time.Now()
		rest := ws[:0]
		for _, w := range ws {
			if w.c.Context().Err() != nil {
				continue // closed: nothing to wait for
			}
			st := w.c.ConnectionStats()
			if st.BytesSent != w.sent {
				w.sent, w.change = st.BytesSent, now
			}
			quiet := 2 * (st.SmoothedRTT + 4*st.MeanDeviation + 25*time.Millisecond)
			if now.Sub(w.change) < quiet {
				rest = append(rest, w)
			}
		}
		ws = rest
		if len(ws) == 0 {
			return true
		}
		if now.After(deadline) {
			return false
		}
		time.Sleep(drainPoll)
	}
	return true
}
