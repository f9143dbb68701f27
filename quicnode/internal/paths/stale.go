package paths

import (
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/quic-go/quic-go"
)

// Restarted peers. A peer that restarted has forgotten every connection of
// its previous run, but we may still hold one (a link is closed only when
// it goes deaf while we send, PathDead, or on QUIC's idle timeout). Two
// things make such a stale link go away at once instead:
//
//   - Every transport has a stateless reset key derived from the node's
//     identity (Config.StatelessResetKey), so a peer restarted on the same
//     port answers the stale link's packets with a stateless reset. quic-go
//     answers only packets longer than 42 bytes, which stream opens, ACKs
//     and keepalives are not: a link reused after pokeQuiet of silence is
//     poked (at most every pokeEvery) with a padded heartbeat (pokeSize)
//     that draws the reset.
//   - A peer that dials us while we hold a link of the same kind that would
//     win the tie-break has lost that link, or is racing a dial of ours. We
//     poke the old link and wait up to staleWait for any packet on it: a live
//     peer acknowledges within a round trip; a restarted one resets it (same
//     port) or stays silent (new port). A silent old link is closed, and the
//     new one is kept.
const (
	pokeSize     = 64                     // bytes of control payload in a poke
	pokeQuiet    = 100 * time.Millisecond // silence after which a reused link is poked
	pokeEvery    = time.Second            // at most one reuse poke per link this often
	staleWaitMin = 300 * time.Millisecond
	staleWaitMax = 2 * time.Second
)

// quietFor returns how long l has heard nothing, as far as the calls to it
// can tell (the maintenance loop calls it every livenessPeriod): when the
// count of received packets grew since the previous call, the last packet
// came after that call, and the silence is counted from there (an
// overestimate by at most the interval between calls, which costs at most
// an extra poke).
func (l *Link) quietFor(now time.Time) time.Duration {
	n := l.Conn.ConnectionStats().PacketsReceived
	prev := l.rxCheckAt.Swap(now.UnixNano())
	if l.rxCount.Swap(n) != n {
		if prev == 0 {
			prev = l.Since.UnixNano()
		}
		l.rxAt.Store(prev)
	}
	at := l.rxAt.Load()
	if at == 0 {
		at = l.Since.UnixNano()
	}
	return now.Sub(time.Unix(0, at))
}

// pokePayload is a heartbeat padded so that its packet draws a stateless
// reset from a restarted peer.
func pokePayload() []byte {
	b := make([]byte, pokeSize)
	b[0] = CtlPing
	return b
}

// poke sends a padded heartbeat on l, at most once per pokeEvery, off the
// caller's path (SendControl may block on a full datagram queue).
func (m *Manager) poke(l *Link, now time.Time) {
	last := l.pokedAt.Load()
	if last != 0 && now.Sub(time.Unix(0, last)) < pokeEvery {
		return
	}
	if !l.pokedAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	m.g.Go(func() { m.host.SendControl(l, pokePayload()) })
}

// pokeIfQuiet pokes l when it is about to carry new traffic after pokeQuiet
// of silence.
func (m *Manager) pokeIfQuiet(l *Link) {
	now := time.Now()
	if l.quietFor(now) >= pokeQuiet {
		m.poke(l, now)
	}
}

// staleWait is how long a poked link may stay silent before it counts as
// stale: three probe timeouts of its path, within [staleWaitMin,
// staleWaitMax].
func staleWait(c *quic.Conn) time.Duration {
	st := c.ConnectionStats()
	w := 3*(st.SmoothedRTT+4*st.MeanDeviation) + 25*time.Millisecond
	return min(max(w, staleWaitMin), staleWaitMax)
}

// settleStale runs before an incoming connection from key is registered:
// if a link of the same kind that we dialled would win the tie-break
// against it, the old link is checked (see above) and closed if stale.
func (m *Manager) settleStale(key addressing.PublicKey, kind Kind) {
	m.mu.Lock()
	var old *Link
	if p, _ := m.peers.Get(key); p != nil {
		old = p.links[kind]
	}
	m.mu.Unlock()
	if old == nil || !old.Alive() || !old.Outgoing || !m.keepOld(old) {
		return
	}
	before := old.Conn.ConnectionStats().PacketsReceived
	old.pokedAt.Store(time.Now().UnixNano())
	if !m.g.Go(func() { m.host.SendControl(old, pokePayload()) }) {
		return
	}
	wait := time.NewTimer(staleWait(old.Conn))
	defer wait.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-old.Conn.Context().Done():
			return // reset by the restarted peer
		case <-m.ctx.Done():
			return
		case <-tick.C:
			if old.Conn.ConnectionStats().PacketsReceived != before {
				return // alive: the tie-break decides as usual
			}
			continue
		case <-wait.C:
		}
		break
	}
	m.stats.pathsDead.Add(1)
	m.log.Info("stale link: the peer dialled anew and the old link is silent", "peer", old.Addr, "path", old.Kind, "remote", remoteString(old.Conn))
	old.Conn.CloseWithError(CodePathDead, "stale: the peer dialled anew")
}

func remoteString(c *quic.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}
