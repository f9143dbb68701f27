package rendezvous

import (
	"math"
	"sync/atomic"
	"time"
)

// EtcdStats are an EtcdStore's counters.
type EtcdStats struct {
	Txns        uint64 // transactions committed (Updates that wrote, one per group commit; prunes; soft-state writes)
	Conflicts   uint64 // commits refused by a compare: another server wrote first; retried
	Errors      uint64 // etcd requests that failed (timeouts, no leader, connection lost)
	Unavailable uint64 // Views and Updates refused: no contact with etcd within the lease TTL
	Reads       uint64 // etcd range reads (replica loads, refetches)
	WatchEvents uint64 // key changes applied to the replica
	Reloads     uint64 // full replica loads (start, watch compacted or broken)
	// SessionDeletes counts the transactions that delete a session record
	// when its connection ends (one per session; not in Txns).
	SessionDeletes uint64
	// Latency is the etcd round trip of every transaction commit.
	Latency Histogram
	// Revision is the etcd revision the replica has applied.
	Revision int64
	// Fresh reports whether the store answers: in contact with etcd within
	// the lease TTL.
	Fresh bool
	// LastContact is when etcd last answered this server.
	LastContact time.Time
	// Servers is the number of rendezvous servers with a live lease,
	// Sessions the number of agents online on any of them.
	Servers, Sessions int
	// Keys is the number of keys in the replica.
	Keys int
	// PushesSent and PushesReceived count introductions forwarded to and
	// from other servers through etcd; PushesDropped those that found no
	// session or a full queue.
	PushesSent, PushesReceived, PushesDropped uint64
}

// Histogram is a snapshot of a latency histogram: Counts[i] observations
// at most Bounds[i] seconds (and above the previous bound), Counts[len(Bounds)]
// the ones above the last bound.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64 // seconds
	Count  uint64
}

// latencyBounds are the buckets of EtcdStats.Latency, in seconds.
var latencyBounds = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// histogram is a lock-free fixed-bucket histogram.
type histogram struct {
	counts [14]atomic.Uint64 // len(latencyBounds)+1
	sumNs  atomic.Uint64
	n      atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := len(latencyBounds)
	for j, b := range latencyBounds {
		if s <= b {
			i = j
			break
		}
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d, 0)))
	h.n.Add(1)
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Bounds: latencyBounds, Counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		out.Counts[i] = h.counts[i].Load()
	}
	out.Sum = float64(h.sumNs.Load()) / 1e9
	out.Count = h.n.Load()
	return out
}

// Quantile returns an estimate of quantile q (0-1) of h: the upper bound of
// the bucket it falls in (+Inf above the last).
func (h Histogram) Quantile(q float64) float64 {
	if h.Count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.Count)))
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			if i < len(h.Bounds) {
				return h.Bounds[i]
			}
			return math.Inf(1)
		}
	}
	return math.Inf(1)
}
