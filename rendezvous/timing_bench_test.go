package rendezvous_test

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// BenchmarkTrustRequestTiming measures what a stranger sees: the round trip
// of a trust request (real QUIC, durable store) to an agent that exists and
// to a name nobody holds, alternating, and reports both medians, their
// ratio and the Mann–Whitney z of the two samples (|z| < 2: no difference
// the test can see; the issue measured p ≈ 1e-12, z ≈ 7, before the
// requests did the same work). Run:
//
//	go test -run '^$' -bench TrustRequestTiming -benchtime 600x ./rendezvous/
func BenchmarkTrustRequestTiming(b *testing.B) {
	// Limits out of the way: the measurement is about the work done.
	srv := rendezvoustest.NewWithConfig(b, rendezvous.ServerConfig{Limits: rendezvous.Limits{
		KeyRate: 1e6, KeyBurst: 1e6, AddrRate: 1e6, AddrBurst: 1e6,
	}})
	id, err := trustdb.GenerateIdentity()
	if err != nil {
		b.Fatal(err)
	}
	bob := srv.NewClient(nil, func(cfg *rendezvous.ClientConfig) { cfg.Hostname = "bob" })
	_ = bob // online: its session delivers each request
	stranger := srv.NewClient(id, nil)
	targets := []addressing.Target{}
	for _, s := range []string{"bob", "zed"} {
		tg, err := addressing.ParseTarget(s)
		if err != nil {
			b.Fatal(err)
		}
		targets = append(targets, tg)
	}
	var d [2][]float64
	ctx := b.Context()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		k := i % 2
		m, err := trustdb.NewMessage(id, trustdb.KindRequest, targets[k], [trustdb.NonceSize]byte{}, "", "")
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := m.AppendBinary(nil)
		start := time.Now()
		if err := stranger.Send(ctx, raw); err != nil {
			b.Fatal(err)
		}
		d[k] = append(d[k], float64(time.Since(start).Microseconds()))
	}
	b.StopTimer()
	if len(d[0]) < 2 || len(d[1]) < 2 {
		return
	}
	med := func(x []float64) float64 { y := slices.Clone(x); slices.Sort(y); return y[len(y)/2] }
	b.ReportMetric(med(d[0]), "exists-p50-µs")
	b.ReportMetric(med(d[1]), "missing-p50-µs")
	b.ReportMetric(med(d[0])/med(d[1]), "ratio")
	b.ReportMetric(mannWhitneyZ(d[0], d[1]), "mw-z")
}

// mannWhitneyZ is the normal approximation of the Mann–Whitney U statistic
// of samples a and b (ties get their mean rank).
func mannWhitneyZ(a, b []float64) float64 {
	type v struct {
		x float64
		a bool
	}
	all := make([]v, 0, len(a)+len(b))
	for _, x := range a {
		all = append(all, v{x, true})
	}
	for _, x := range b {
		all = append(all, v{x, false})
	}
	slices.SortFunc(all, func(p, q v) int {
		switch {
		case p.x < q.x:
			return -1
		case p.x > q.x:
			return 1
		}
		return 0
	})
	var ra float64
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].x == all[i].x {
			j++
		}
		rank := float64(i+j+1) / 2 // mean of ranks i+1..j
		for k := i; k < j; k++ {
			if all[k].a {
				ra += rank
			}
		}
		i = j
	}
	n1, n2 := float64(len(a)), float64(len(b))
	u := ra - n1*(n1+1)/2
	mu := n1 * n2 / 2
	sigma := math.Sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
	return (u - mu) / sigma
}
