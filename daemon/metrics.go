package daemon

import (
	"errors"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentnet/agentnet/internal/metrics"
	"github.com/agentnet/agentnet/trustdb"
)

// PathMetrics is the control API's Prometheus endpoint (text format).
const PathMetrics = "/v1/metrics"

// metricsState is the daemon's registry, built on first use (after the
// node runs).
type metricsState struct {
	once sync.Once
	reg  *prometheus.Registry
	srv  *metrics.Server // the optional TCP listener (Config.MetricsAddr)
}

func (d *Daemon) registry() *prometheus.Registry {
	d.metrics.once.Do(func() {
		d.metrics.reg = metrics.Node(d.node, metrics.NodeSource{
			Registered: func() bool {
				ok, _ := registration(d.node)
				return ok
			},
			EventsDropped: func() uint64 { return d.bus.Dropped() },
			InboxBytes:    func() int64 { return d.inbox.Bytes() },
			Trust: func() (trusted, pending int) {
				for _, r := range d.store.List() {
					switch r.State {
					case trustdb.StateTrusted:
						trusted++
					case trustdb.StatePendingIn:
						pending++
					}
				}
				return trusted, pending
			},
		})
	})
	return d.metrics.reg
}

// metricsRoute serves GET /v1/metrics on the control socket.
func (d *Daemon) metricsRoute(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathMetrics, func(w http.ResponseWriter, r *http.Request) {
		promhttp.HandlerFor(d.registry(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
	})
}

// startMetrics serves /metrics, /healthz and /readyz on Config.MetricsAddr
// if set (ready: registered at the rendezvous).
func (d *Daemon) startMetrics() (stop func(), err error) {
	if d.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	srv, err := metrics.Listen(d.cfg.MetricsAddr, metrics.Handler(d.registry(), func() error {
		ok, err := registration(d.node)
		if err == nil && !ok {
			err = errors.New("daemon: not registered at the rendezvous")
		}
		return err
	}), d.log)
	if err != nil {
		return nil, err
	}
	d.metrics.srv = srv
	d.log.Info("metrics serving", "addr", srv.Addr().String())
	return func() { srv.Close() }, nil
}

// MetricsAddr returns the address the metrics listener serves on ("" if
// none). Call it after Ready.
func (d *Daemon) MetricsAddr() string {
	if d.metrics.srv == nil {
		return ""
	}
	return d.metrics.srv.Addr().String()
}
