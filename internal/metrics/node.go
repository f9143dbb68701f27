package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentnet/agentnet/quicnode"
)

// NodeSource is what the node collector reads besides the quicnode.Node:
// the daemon's own counters. Nil funcs export nothing.
type NodeSource struct {
	// Registered reports whether the node is registered at a rendezvous.
	Registered func() bool
	// EventsDropped is the event bus's dropped-event count.
	EventsDropped func() uint64
	// InboxBytes is the inbox's size.
	InboxBytes func() int64
	// Trust returns the number of trusted peers and of requests waiting
	// for our decision.
	Trust func() (trusted, pending int)
}

// Node returns a registry exporting n's counters (Stats, Peers, NATInfo)
// and those of src, read at every scrape.
func Node(n *quicnode.Node, src NodeSource) *prometheus.Registry {
	var (
		st              quicnode.Stats
		peers           []quicnode.PeerStatus
		nat             string
		registered      float64
		trusted, waitin int
	)
	c := &collector{snapshot: func() {
		st, peers = n.Stats(), n.Peers()
		nat = string(n.NATInfo().Kind)
		if nat == "" {
			nat = string(quicnode.NATUnknown)
		}
		registered = 0
		if src.Registered != nil && src.Registered() {
			registered = 1
		}
		if src.Trust != nil {
			trusted, waitin = src.Trust()
		}
	}}
	b := &builder{prefix: "agentnet_node_"}
	u := func(v *uint64) func() uint64 { return func() uint64 { return *v } }

	b.gauge("rendezvous_registered", "1 while the node is registered at a rendezvous, else 0.", func() float64 { return registered })
	b.add(prometheus.GaugeValue, "nat_kind", "The NAT kind of the last check: 1 for the kind found.", []string{"kind"}, func(emit func(float64, ...string)) {
		emit(1, nat)
	})
	b.add(prometheus.GaugeValue, "links", "Live peer connections by path (direct, relay) and role (active, standby).", []string{"path", "role"}, func(emit func(float64, ...string)) {
		counts := map[[2]string]int{{"direct", "active"}: 0, {"direct", "standby"}: 0, {"relay", "active"}: 0, {"relay", "standby"}: 0}
		for _, p := range peers {
			role := "active"
			if p.Standby {
				role = "standby"
			}
			counts[[2]string{p.Path, role}]++
		}
		for k, v := range counts {
			emit(float64(v), k[0], k[1])
		}
	})
	b.add(prometheus.GaugeValue, "link_bytes", "Bytes sent and received on the live peer connections, by path and direction.", []string{"path", "direction"}, func(emit func(float64, ...string)) {
		sums := map[[2]string]uint64{{"direct", "sent"}: 0, {"direct", "received"}: 0, {"relay", "sent"}: 0, {"relay", "received"}: 0}
		for _, p := range peers {
			sums[[2]string{p.Path, "sent"}] += p.BytesSent
			sums[[2]string{p.Path, "received"}] += p.BytesReceived
		}
		for k, v := range sums {
			emit(float64(v), k[0], k[1])
		}
	})
	b.counter("datagrams_dropped_total", "Datagrams dropped: no listener on the port, queue full, or malformed.", u(&st.DatagramsDropped))
	b.counter("bad_streams_total", "Streams reset for a malformed or late header.", u(&st.BadStreams))
	b.counter("non_quic_packets_total", "Packets read beside QUIC on the node's socket (STUN, punch probes).", u(&st.NonQUICPackets))
	b.counter("dials_total", "Dials to peers (a dial shared by several callers counts once).", u(&st.Paths.Dials))
	b.counter("dial_failures_total", "Dials to peers that failed.", u(&st.Paths.DialFailures))
	b.counter("punch_attempts_total", "Introductions that started hole punching.", u(&st.Paths.Punches))
	b.counter("punch_successes_total", "Direct links a hole punch made.", u(&st.Paths.PunchedLinks))
	b.counter("birthday_attempts_total", "Birthday-punching attempts (a hard NAT meeting an easy one).", u(&st.Paths.Birthdays))
	b.counter("birthday_successes_total", "Direct links a birthday attempt made.", u(&st.Paths.BirthdayLinks))
	b.counter("relay_links_total", "Relayed links dialled.", u(&st.Paths.RelayLinks))
	b.counterVec("path_changes_total", "Path changes, by kind: a link closed because its path went deaf, a direct path failed over to the relay, a silent direct link re-punched in place, one heard again after that, one whose packets now go to its peer's new address.", "kind", []labelled{
		{"dead_path", u(&st.Paths.PathsDead)},
		{"failover", u(&st.Paths.Failovers)},
		{"repair", u(&st.Paths.Repairs)},
		{"repaired", u(&st.Paths.Repaired)},
		{"redirect", u(&st.Paths.Redirected)},
	})
	b.counterVec("refused_total", "Handshakes and documents refused, by reason.", "reason", []labelled{
		{"knock", u(&st.KnocksRefused)},
		{"network_doc", u(&st.NetworkDocsRefused)},
	})
	if src.Trust != nil {
		b.gauge("trusted_peers", "Peers we trust (mutual consent).", func() float64 { return float64(trusted) })
		b.gauge("trust_pending", "Trust requests waiting for our decision.", func() float64 { return float64(waitin) })
	}
	if src.EventsDropped != nil {
		b.counter("events_dropped_total", "Events dropped from full subscriber queues.", src.EventsDropped)
	}
	if src.InboxBytes != nil {
		b.gauge("inbox_bytes", "Bytes in the inbox.", func() float64 { return float64(src.InboxBytes()) })
	}
	c.metrics = b.ms
	return newRegistry(c)
}
