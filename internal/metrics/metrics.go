// Package metrics exports agentnet's counters in the Prometheus text format
// (github.com/prometheus/client_golang) and serves the operator endpoints:
// /metrics, /healthz and /readyz.
//
// The collectors own no counters: at every scrape they read the snapshots
// the components already keep (rendezvous.Server.Stats, RelayStats,
// StoreStats; quicnode.Node.Stats and Peers; the daemon's counters), so
// nothing is counted twice and a scrape costs a few atomic loads. Each
// registry is private (never the global default one), so two servers in
// one process, or an embedded etcd in a test, never mix their series.
//
// Names follow the Prometheus conventions: agentnet_<role>_<what>, counters
// end in _total, sizes in _bytes, durations in _seconds.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metric is one exported series family: its description and how to read
// its samples at scrape time.
type metric struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	read func(emit func(v float64, labels ...string))
}

// collector reads a list of metrics at every scrape. snapshot, if set,
// runs first (once per scrape) so that the reads share one snapshot.
type collector struct {
	mu       sync.Mutex // one scrape at a time: snapshot and reads share state
	snapshot func()
	metrics  []metric
	extra    func(ch chan<- prometheus.Metric) // histograms and other non-scalar series
	extraD   []*prometheus.Desc                // their descriptions
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
	for _, d := range c.extraD {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snapshot != nil {
		c.snapshot()
	}
	for _, m := range c.metrics {
		m.read(func(v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(m.desc, m.kind, v, labels...)
		})
	}
	if c.extra != nil {
		c.extra(ch)
	}
}

// builder collects metric definitions.
type builder struct {
	prefix string
	ms     []metric
}

func (b *builder) add(kind prometheus.ValueType, name, help string, labels []string, read func(emit func(float64, ...string))) {
	b.ms = append(b.ms, metric{
		desc: prometheus.NewDesc(b.prefix+name, help, labels, nil),
		kind: kind,
		read: read,
	})
}

func (b *builder) counter(name, help string, v func() uint64) {
	b.add(prometheus.CounterValue, name, help, nil, func(emit func(float64, ...string)) { emit(float64(v())) })
}

func (b *builder) gauge(name, help string, v func() float64) {
	b.add(prometheus.GaugeValue, name, help, nil, func(emit func(float64, ...string)) { emit(v()) })
}

// labelled is one sample of a family with a label.
type labelled struct {
	label string
	v     func() uint64
}

func (b *builder) counterVec(name, help, label string, samples []labelled) {
	b.add(prometheus.CounterValue, name, help, []string{label}, func(emit func(float64, ...string)) {
		for _, s := range samples {
			emit(float64(s.v()), s.label)
		}
	})
}

// newRegistry returns a private registry with the collector of b and the
// Go runtime and process collectors.
func newRegistry(c *collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg: GET /metrics (Prometheus text format), /healthz (200
// "ok" while the process serves HTTP) and /readyz (200 "ready" when ready
// returns nil, else 503 with the reason). ready may be nil (always ready).
func Handler(reg prometheus.Gatherer, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready != nil {
			if err := ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "not ready:", err)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Server is an HTTP listener serving a Handler. Close stops it and waits
// for its goroutine.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// Listen serves h on the TCP address addr ("host:port"; port 0 picks one).
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		ln: ln,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      15 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics: serve failed", "err", err)
		}
	}()
	return s, nil
}

// Addr returns the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops serving at once and waits for the serving goroutine.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	return err
}
