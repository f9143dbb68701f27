package quicnode

import (
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/quicnode/internal/paths"
)

// CloseDrain bounds how long Close waits for data queued on streams to
// reach the peers before it closes the connections (see Node.Close).
const CloseDrain = 2 * time.Second

// drainPoll is how often the drain looks at the connections.
const drainPoll = 5 * time.Millisecond

// drain waits, until deadline, for every live peer connection (each
// peer's direct and relayed links, the standby one included) to go quiet:
// to send nothing for 2 × (2 × smoothed RTT + 25 ms), about twice its probe
// timeout (25 ms is QUIC's default max ack delay). While stream data or
// a FIN is queued or unacknowledged, quic-go keeps sending it (and
// retransmits it at the probe timeout), so a connection quiet for that
// long has had everything written to it acknowledged, or is blocked by
// the peer's flow control (a reader that does not read), which the drain
// does not wait out. It reports whether every connection went quiet.
func (n *Node) drain(deadline time.Time) bool {
	if n.paths == nil {
		return true
	}
	type linkID struct {
		key  addressing.PublicKey
		kind paths.Kind
	}
	type watch struct {
		sent   uint64
		change time.Time
	}
	ws := map[linkID]*watch{}
	for {
		now := time.Now()
		live := n.paths.Links() // live links only: a closed one drops out
		busy := 0
		for _, l := range live {
			id := linkID{l.Key, l.Kind}
			w := ws[id]
			if w == nil || w.sent != l.BytesSent {
				if w == nil {
					w = &watch{}
					ws[id] = w
				}
				w.sent, w.change = l.BytesSent, now
			}
			if now.Sub(w.change) < 2*(2*l.RTT+25*time.Millisecond) {
				busy++
			}
		}
		if busy == 0 {
			return true
		}
		if now.After(deadline) {
			return false
		}
		time.Sleep(drainPoll)
	}
}
