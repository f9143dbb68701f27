package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentnet/agentnet/rendezvous"
)

// Rendezvous returns a registry exporting srv's counters (Stats,
// RelayStats, StoreStats), read at every scrape.
func Rendezvous(srv *rendezvous.Server) *prometheus.Registry {
	var (
		st    rendezvous.Stats
		rs    rendezvous.RelayStats
		ss    rendezvous.StoreStats
		ssErr error
		ready float64
	)
	c := &collector{snapshot: func() {
		st, rs = srv.Stats(), srv.RelayStats()
		ss, ssErr = srv.StoreStats()
		ready = 0
		if srv.Ready() == nil {
			ready = 1
		}
	}}
	b := &builder{prefix: "agentnet_rendezvous_"}
	u := func(v *uint64) func() uint64 { return func() uint64 { return *v } }

	b.gauge("ready", "1 while the server serves and its store answers (see /readyz), else 0.", func() float64 { return ready })
	b.gauge("connections", "Open client connections.", func() float64 { return float64(st.Conns) })
	b.gauge("sessions", "Agents registered (online) on this server.", func() float64 { return float64(st.Sessions) })
	b.counter("registrations_total", "Register requests answered Registered.", u(&st.Registrations))
	b.counter("lookups_total", "Lookup requests answered (found or not found alike).", u(&st.Lookups))
	b.counter("sessions_replaced_total", "Sessions closed because their key registered again elsewhere.", u(&st.SessionsReplaced))
	b.counter("trust_messages_total", "Trust messages (request, approve, reject, revoke) accepted.", u(&st.TrustMessages))
	b.counter("mailbox_delivered_total", "Mailbox messages written to sessions, redeliveries included.", u(&st.Delivered))
	b.counter("mailbox_acked_total", "Mailbox messages acknowledged and deleted.", u(&st.Acked))
	b.counter("introductions_total", "Connect requests answered with an introduction.", u(&st.Introductions))
	b.counter("network_docs_total", "Networks created and Join, Leave and Remove documents accepted.", u(&st.NetworkDocs))
	b.counter("network_pushes_total", "NetworkState frames pushed on session streams.", u(&st.NetworkPushes))
	b.counter("store_errors_total", "Store operations that failed (answered internal).", u(&st.StoreErrors))
	b.counterVec("refused_total", "Requests, connections and messages refused or dropped, by reason.", "reason", []labelled{
		{"connection_limit_or_rate", u(&st.ConnsRefused)},
		{"rate_limited", u(&st.RateLimited)},
		{"bad_frame", u(&st.BadFrames)},
		{"trust_message", u(&st.TrustRefused)},
		{"network_doc", u(&st.NetworkRefused)},
		{"request_over_target_limit", u(&st.RequestsDropped)},
		{"mailbox_full", u(&st.MailboxDropped)},
		{"intro_push_queue_full", u(&st.IntroPushDropped)},
	})

	b.gauge("relay_sessions", "Open relay sessions.", func() float64 { return float64(rs.Sessions) })
	b.counter("relay_sessions_opened_total", "Relay sessions opened for introductions.", u(&rs.SessionsOpened))
	b.counter("relay_sessions_expired_total", "Relay sessions closed idle.", u(&rs.SessionsExpired))
	b.counter("relay_sessions_closed_total", "Relay sessions closed by a revocation or replaced.", u(&rs.SessionsClosed))
	b.counter("relay_forwarded_packets_total", "Relay data frames forwarded.", u(&rs.ForwardedPackets))
	b.counter("relay_forwarded_bytes_total", "Bytes of relay data frames forwarded.", u(&rs.ForwardedBytes))
	b.counter("relay_binds_total", "Relay binds accepted.", u(&rs.BindsAccepted))
	b.counterVec("relay_dropped_total", "Relay frames dropped or refused, by reason.", "reason", []labelled{
		{"unknown_session", u(&rs.DroppedUnknownSession)},
		{"wrong_source", u(&rs.DroppedWrongSource)},
		{"no_peer", u(&rs.DroppedNoPeer)},
		{"over_limit", u(&rs.DroppedOverLimit)},
		{"malformed", u(&rs.DroppedMalformed)},
		{"bind_refused", u(&rs.BindsRefused)},
		{"session_refused_full", u(&rs.SessionsRefused)},
	})
	b.counter("stun_answered_total", "STUN binding requests answered (both addresses).", u(&rs.STUNAnswered))
	b.counterVec("stun_dropped_total", "STUN packets not answered, by reason.", "reason", []labelled{
		{"not_binding_request", u(&rs.STUNDropped)},
		{"smaller_than_answer", u(&rs.STUNDroppedSize)},
		{"rate_limited", u(&rs.STUNRateLimited)},
	})

	ok := func() bool { return ssErr == nil }
	b.add(prometheus.GaugeValue, "store_agents", "Agents registered in the store.", []string{"store"}, func(emit func(float64, ...string)) {
		if ok() {
			emit(float64(ss.Agents), ss.Kind)
		}
	})
	b.add(prometheus.GaugeValue, "store_mailbox_messages", "Messages queued in all mailboxes (the mailbox depth).", []string{"store"}, func(emit func(float64, ...string)) {
		if ok() && ss.Mail >= 0 {
			emit(float64(ss.Mail), ss.Kind)
		}
	})
	b.add(prometheus.GaugeValue, "store_bytes", "Size of the store: the bbolt file, or the etcd replica's keys and values.", []string{"store"}, func(emit func(float64, ...string)) {
		if ok() {
			emit(float64(ss.Bytes), ss.Kind)
		}
	})
	etcd := func(f func(e *rendezvous.EtcdStats) float64) func(emit func(float64, ...string)) {
		return func(emit func(float64, ...string)) {
			if ok() && ss.Etcd != nil {
				emit(f(ss.Etcd))
			}
		}
	}
	b.add(prometheus.CounterValue, "etcd_txns_total", "etcd transactions committed.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Txns) }))
	b.add(prometheus.CounterValue, "etcd_conflicts_total", "etcd commits refused by a compare (another server wrote first) and retried.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Conflicts) }))
	b.add(prometheus.CounterValue, "etcd_errors_total", "etcd requests that failed.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Errors) }))
	b.add(prometheus.CounterValue, "etcd_unavailable_total", "Reads and writes refused because etcd has not answered within the lease TTL.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Unavailable) }))
	b.add(prometheus.CounterValue, "etcd_reads_total", "etcd range reads (replica loads).", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Reads) }))
	b.add(prometheus.CounterValue, "etcd_watch_events_total", "Key changes applied to the replica from the etcd watch.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.WatchEvents) }))
	b.add(prometheus.CounterValue, "etcd_reloads_total", "Full replica loads (start, compacted or broken watch).", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Reloads) }))
	b.add(prometheus.GaugeValue, "etcd_revision", "etcd revision the replica has applied.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Revision) }))
	b.add(prometheus.GaugeValue, "etcd_fresh", "1 while etcd answered within the lease TTL, else 0 (lookups and writes refused).", nil, etcd(func(e *rendezvous.EtcdStats) float64 {
		if e.Fresh {
			return 1
		}
		return 0
	}))
	b.add(prometheus.GaugeValue, "etcd_last_contact_seconds", "Unix time etcd last answered this server.", nil, etcd(func(e *rendezvous.EtcdStats) float64 {
		if e.LastContact.IsZero() {
			return 0
		}
		return float64(e.LastContact.UnixNano()) / 1e9
	}))
	b.add(prometheus.GaugeValue, "cluster_servers", "Rendezvous servers with a live etcd lease.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Servers) }))
	b.add(prometheus.GaugeValue, "cluster_sessions", "Agents online on any server of the cluster.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Sessions) }))
	b.add(prometheus.GaugeValue, "etcd_replica_keys", "Keys in this server's replica of the etcd keyspace.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.Keys) }))
	b.add(prometheus.CounterValue, "cluster_pushes_sent_total", "Introductions forwarded to another server through etcd.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.PushesSent) }))
	b.add(prometheus.CounterValue, "cluster_pushes_received_total", "Introductions received from another server through etcd.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.PushesReceived) }))
	b.add(prometheus.CounterValue, "cluster_pushes_dropped_total", "Introductions from another server that found no session here or a full queue.", nil, etcd(func(e *rendezvous.EtcdStats) float64 { return float64(e.PushesDropped) }))

	latency := prometheus.NewDesc("agentnet_rendezvous_etcd_txn_seconds", "etcd round trip of each transaction commit.", nil, nil)
	c.metrics = b.ms
	c.extraD = []*prometheus.Desc{latency}
	c.extra = func(ch chan<- prometheus.Metric) {
		if ssErr != nil || ss.Etcd == nil {
			return
		}
		h := ss.Etcd.Latency
		buckets := make(map[float64]uint64, len(h.Bounds))
		var cum uint64
		for i, bound := range h.Bounds {
			cum += h.Counts[i]
			buckets[bound] = cum
		}
		ch <- prometheus.MustNewConstHistogram(latency, h.Count, h.Sum, buckets)
	}
	return newRegistry(c)
}
