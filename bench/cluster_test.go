package bench

import (
	"errors"
	"strings"
	"testing"
)

// BenchmarkRendezvousStores runs the store configurations of cluster.go
// (bbolt one server, etcd one server, etcd three servers) once per
// iteration at quick sizes and reports their figures.
func BenchmarkRendezvousStores(b *testing.B) {
	sz, err := SizesFor(ModeQuick)
	if err != nil {
		b.Fatal(err)
	}
	defs := clusterMetrics()
	for _, cc := range clusterConfigs {
		b.Run(cc.name, func(b *testing.B) {
			for b.Loop() {
				vals, err := RendezvousCluster(b.Context(), sz, cc)
				if errors.Is(err, ErrNotSupported) {
					b.Skip(err)
				}
				if err != nil {
					b.Fatal(err)
				}
				for i, v := range vals {
					b.ReportMetric(v, strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(defs[i].name))
				}
			}
		})
	}
}
