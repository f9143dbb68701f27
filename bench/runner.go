package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"
)

// Sizes scale the scenarios.
type Sizes struct {
	Reps                int           // repetitions of each repeated scenario; figures are medians
	BulkBytes           int64         // bulk transfer on one stream
	PingPongs           int           // round trips per repetition (stream and datagram)
	Messages            int           // 1 KiB messages on one stream
	StreamMessages      int           // 1 KiB messages, a stream each (at most)
	StreamMessagesTime  time.Duration // ... or for at most this long
	SetupRounds         int           // connection setups per repetition
	ConcurrentStreams   int
	RequestPeers        int   // peers of the stream-per-req-peers row
	DatagramRequests    int   // requests of the req-datagrams row
	ConcurrentBytes     int64 // per stream
	IdlePeers           int
	RefusalTime         time.Duration // length of each refusal attack
	RendezvousAgents    int           // agents registered (then offline)
	RendezvousConnected int           // agents registered and kept connected
	RendezvousOps       int           // lookups and trust requests, each
	RelayBytes          int64         // bulk transfer on each path of the relay scenario
	RelayPingPongs      int           // round trips on each path of the relay scenario
	RelayBudgetBytes    int64         // bulk transfer under the default relay budget
}

// Modes of the runner.
const (
	ModeTiny    = "tiny" // the smallest sizes, for tests
	ModeQuick   = "quick"
	ModeDefault = "default"
	ModeFull    = "full"
)

// SizesFor returns the sizes of a mode.
func SizesFor(mode string) (Sizes, error) {
	switch mode {
	case ModeTiny:
		return Sizes{
			Reps: 1, BulkBytes: 1 << 20, PingPongs: 50, Messages: 200,
			StreamMessages: 50, StreamMessagesTime: 100 * time.Millisecond,
			SetupRounds: 3, ConcurrentStreams: 20, RequestPeers: 5, DatagramRequests: 20, ConcurrentBytes: 16 << 10,
			IdlePeers: 5, RefusalTime: 200 * time.Millisecond,
			RendezvousAgents: 20, RendezvousConnected: 10, RendezvousOps: 50,
			RelayBytes: 1 << 20, RelayPingPongs: 50, RelayBudgetBytes: 1 << 20,
		}, nil
	case ModeQuick:
		return Sizes{
			Reps: 3, BulkBytes: 64 << 20, PingPongs: 1000, Messages: 20000,
			StreamMessages: 2000, StreamMessagesTime: 200 * time.Millisecond,
			SetupRounds: 10, ConcurrentStreams: 200, RequestPeers: 100, DatagramRequests: 200, ConcurrentBytes: 64 << 10,
			IdlePeers: 50, RefusalTime: 500 * time.Millisecond,
			RendezvousAgents: 500, RendezvousConnected: 100, RendezvousOps: 1000,
			RelayBytes: 8 << 20, RelayPingPongs: 300, RelayBudgetBytes: 2 << 20,
		}, nil
	case ModeDefault:
		return Sizes{
			Reps: 3, BulkBytes: 1 << 30, PingPongs: 10000, Messages: 100000,
			StreamMessages: 5000, StreamMessagesTime: time.Second,
			SetupRounds: 50, ConcurrentStreams: 1000, RequestPeers: 100, DatagramRequests: 500, ConcurrentBytes: 256 << 10,
			IdlePeers: 1000, RefusalTime: 1500 * time.Millisecond,
			RendezvousAgents: 10000, RendezvousConnected: 1000, RendezvousOps: 10000,
			RelayBytes: 64 << 20, RelayPingPongs: 5000, RelayBudgetBytes: 16 << 20,
		}, nil
	case ModeFull:
		return Sizes{
			Reps: 5, BulkBytes: 1 << 30, PingPongs: 10000, Messages: 200000,
			StreamMessages: 10000, StreamMessagesTime: 2 * time.Second,
			SetupRounds: 100, ConcurrentStreams: 1000, RequestPeers: 100, DatagramRequests: 1000, ConcurrentBytes: 1 << 20,
			IdlePeers: 1000, RefusalTime: 5 * time.Second,
			RendezvousAgents: 100000, RendezvousConnected: 2000, RendezvousOps: 20000,
			RelayBytes: 256 << 20, RelayPingPongs: 10000, RelayBudgetBytes: 32 << 20,
		}, nil
	}
	return Sizes{}, fmt.Errorf("bench: unknown mode %q", mode)
}

// Options configure Run.
type Options struct {
	Mode    string         // one of the Mode constants; "" is ModeDefault
	Sizes   *Sizes         // overrides the mode's sizes if set
	Only    *regexp.Regexp // runs only the scenarios whose name matches; nil runs all
	Systems []System       // nil means Systems
	// Progress receives one line per finished measurement; nil discards.
	Progress io.Writer
	// RTT, if set, is added to every path between the nodes and peers of
	// agentnet and raw quic-go (see packetConn); the rendezvous' own
	// socket adds nothing, so a node's round trip to it is RTT/2. TCP and
	// TLS are not delayed.
	RTT time.Duration
	// CountDatagrams wraps the sockets of agentnet's and raw quic-go's
	// nodes and peers in a counter (a plain net.PacketConn, as RTT does),
	// so the req-datagrams row can count UDP datagrams per request; with
	// RTT set they are counted anyway.
	CountDatagrams bool
}

// Cell is one system's figure for a row: a value, or why there is none.
type Cell struct {
	Value *float64 `json:"value,omitempty"`
	NA    string   `json:"na,omitempty"`    // "n/a" reason
	Error string   `json:"error,omitempty"` // the measurement failed
}

// Row is one metric of one scenario across systems.
type Row struct {
	Scenario string          `json:"scenario"` // the -only name
	Title    string          `json:"title"`
	Metric   string          `json:"metric"`
	Better   string          `json:"better"` // "higher" or "lower"
	Cells    map[System]Cell `json:"cells"`
	Ratio    *float64        `json:"ratio_agentnet_quic_go"`
}

// Report is the outcome of Run: the one JSON object of --json.
type Report struct {
	Machine Machine   `json:"machine"`
	Mode    string    `json:"mode"`
	Sizes   Sizes     `json:"sizes"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	Systems []System  `json:"systems"`
	RTTms   float64   `json:"emulated_rtt_ms,omitempty"` // Options.RTT
	Rows    []Row     `json:"rows"`
}

type metricDef struct {
	name   string
	better string
}

// scenario is one line of the plan. run returns one value per metric.
type scenario struct {
	name    string
	title   func(Sizes) string
	metrics []metricDef
	// rig: the scenario runs on the system's Rig; otherwise it gets nil.
	rig bool
	// once: one repetition only (expensive, or repeated inside).
	once bool
	// only, if set, lists the systems the scenario applies to; the others
	// get onlyWhy as their n/a reason.
	only    []System
	onlyWhy string
	timeout func(Sizes) time.Duration
	run     func(ctx context.Context, sys System, r *Rig, sz Sizes) ([]float64, error)
}

var (
	higher = "higher"
	lower  = "lower"
)

func latencyMetrics() []metricDef {
	return []metricDef{{"p50 µs", lower}, {"p99 µs", lower}}
}

func latencyValues(l Latency) []float64 { return []float64{micros(l.P50()), micros(l.P99())} }

// Plan is the list of scenarios, in table order.
func plan() []scenario {
	minute := func(Sizes) time.Duration { return time.Minute }
	return append([]scenario{
		{
			name:    "bulk",
			title:   func(sz Sizes) string { return "bulk " + byteSize(sz.BulkBytes) + ", one stream" },
			metrics: []metricDef{{"MB/s", higher}, {"CPU-s/GiB (process)", lower}},
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				t, err := Bulk(ctx, r, sz.BulkBytes)
				return []float64{t.MBps(), t.CPUPerGiB()}, err
			},
		},
		{
			name:    "pingpong",
			title:   func(sz Sizes) string { return fmt.Sprintf("ping-pong 1 B, stream (%d)", sz.PingPongs) },
			metrics: latencyMetrics(),
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				l, err := PingPong(ctx, r, sz.PingPongs)
				return latencyValues(l), err
			},
		},
		{
			name:    "dgram",
			title:   func(sz Sizes) string { return fmt.Sprintf("ping-pong 1 B, datagram (%d)", sz.PingPongs) },
			metrics: append(latencyMetrics(), metricDef{"lost", lower}),
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				l, lost, err := DatagramPingPong(ctx, r, sz.PingPongs)
				return append(latencyValues(l), float64(lost)), err
			},
		},
		{
			name:    "messages",
			title:   func(sz Sizes) string { return fmt.Sprintf("1 KiB messages, one stream (%d)", sz.Messages) },
			metrics: []metricDef{{"msg/s", higher}},
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				rate, err := Messages(ctx, r, sz.Messages)
				return []float64{rate.PerSecond()}, err
			},
		},
		{
			name: "stream-per-msg",
			title: func(sz Sizes) string {
				return fmt.Sprintf("1 KiB messages, new stream each (TCP/TLS: connection; ≤%d or %s)", sz.StreamMessages, sz.StreamMessagesTime)
			},
			metrics: []metricDef{{"msg/s", higher}, {"dials retried (backlog full)", lower}},
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				rate, busy, err := StreamPerMessage(ctx, r, sz.StreamMessages, sz.StreamMessagesTime)
				return []float64{rate.PerSecond(), float64(busy)}, err
			},
		},
		{
			name: "stream-per-req",
			title: func(sz Sizes) string {
				return fmt.Sprintf("1 KiB request/response, new stream each, sequential (TCP/TLS: connection; ≤%d or %s)", sz.StreamMessages, sz.StreamMessagesTime)
			},
			metrics: []metricDef{{"req/s", higher}, {"CPU µs/req", lower}, {"p99 µs", lower}},
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				rate, p99, err := Requests(ctx, r, 0, sz.StreamMessages, sz.StreamMessagesTime)
				return []float64{rate.PerSecond(), float64(rate.CPU.Microseconds()) / float64(max(rate.N, 1)), float64(p99.Microseconds())}, err
			},
		},
		{
			name: "stream-per-req-peers",
			title: func(sz Sizes) string {
				return fmt.Sprintf("same, %d peers at once (≤%d or %s)", sz.RequestPeers, sz.StreamMessages*4, sz.StreamMessagesTime)
			},
			metrics: []metricDef{{"req/s", higher}, {"CPU µs/req", lower}, {"p99 µs", lower}},
			rig:     true, timeout: func(Sizes) time.Duration { return 3 * time.Minute },
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				rate, p99, err := Requests(ctx, r, sz.RequestPeers, sz.StreamMessages*4, sz.StreamMessagesTime)
				return []float64{rate.PerSecond(), float64(rate.CPU.Microseconds()) / float64(max(rate.N, 1)), float64(p99.Microseconds())}, err
			},
		},
		{
			name: "req-datagrams",
			title: func(sz Sizes) string {
				return fmt.Sprintf("UDP datagrams per 1 KiB request/response on a new stream, both ends (%d; needs -count-datagrams or -rtt)", sz.DatagramRequests)
			},
			metrics: []metricDef{{"datagrams/req", lower}},
			rig:     true, timeout: minute,
			only:    []System{Agentnet, QUIC},
			onlyWhy: "not UDP",
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				if !countingSockets() {
					return nil, fmt.Errorf("%w: run with -count-datagrams or -rtt", ErrNotSupported)
				}
				d, err := RequestDatagrams(ctx, r, sz.DatagramRequests)
				return []float64{d}, err
			},
		},
		{
			name: "setup-first",
			title: func(sz Sizes) string {
				return fmt.Sprintf("setup, first contact → first echoed byte (%d)", sz.SetupRounds)
			},
			metrics: latencyMetrics(),
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				l, err := SetupFirst(ctx, r, sz.SetupRounds)
				return latencyValues(l), err
			},
		},
		{
			name: "setup-repeat",
			title: func(sz Sizes) string {
				return fmt.Sprintf("setup, repeat contact, locator known (%d)", sz.SetupRounds)
			},
			metrics: latencyMetrics(),
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				l, err := SetupRepeat(ctx, r, sz.SetupRounds)
				return latencyValues(l), err
			},
		},
		{
			name: "concurrent",
			title: func(sz Sizes) string {
				return fmt.Sprintf("%d concurrent streams × %s (TCP/TLS: connections)", sz.ConcurrentStreams, byteSize(sz.ConcurrentBytes))
			},
			metrics: []metricDef{{"MB/s", higher}, {"dials retried (backlog full)", lower}},
			rig:     true, timeout: minute,
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				t, busy, err := ConcurrentStreams(ctx, r, sz.ConcurrentStreams, sz.ConcurrentBytes)
				return []float64{t.MBps(), float64(busy)}, err
			},
		},
		{
			name:    "idle",
			title:   func(sz Sizes) string { return fmt.Sprintf("%d idle connected peers (both ends)", sz.IdlePeers) },
			metrics: []metricDef{{"heap B/peer", lower}, {"goroutines/peer", lower}},
			rig:     true, once: true,
			only:    []System{Agentnet, QUIC},
			onlyWhy: "connection = stream",
			timeout: func(Sizes) time.Duration { return 3 * time.Minute },
			run: func(ctx context.Context, _ System, r *Rig, sz Sizes) ([]float64, error) {
				c, err := Idle(ctx, r, sz.IdlePeers)
				return []float64{c.HeapPerPeer, c.GoroutinesPerPeer}, err
			},
		},
		{
			name:    "refusal",
			title:   func(Sizes) string { return "untrusted handshakes refused (gate in a child process)" },
			metrics: []metricDef{{"refused/s/core", higher}, {"refused/s", higher}},
			only:    []System{Agentnet, QUIC, TLS},
			onlyWhy: "no handshake",
			timeout: minute,
			run: func(ctx context.Context, sys System, _ *Rig, sz Sizes) ([]float64, error) {
				r, err := Refusal(ctx, sys, sz.RefusalTime)
				if err == nil && r.Admitted > 0 {
					err = fmt.Errorf("bench: the gate admitted %d untrusted handshakes", r.Admitted)
				}
				return []float64{r.PerCore(), r.PerSecond()}, err
			},
		},
		{
			name: "rendezvous",
			title: func(sz Sizes) string {
				return fmt.Sprintf("rendezvous, %d agents (server in a child process)", sz.RendezvousAgents)
			},
			metrics: []metricDef{
				{"registrations/s", higher}, {"registrations/s/core", higher},
				{"lookups/s", higher}, {"trust requests/s", higher},
				{"RSS B/agent offline", lower}, {"RSS B/agent connected", lower},
			},
			once:    true,
			only:    []System{Agentnet},
			onlyWhy: "no rendezvous",
			timeout: func(Sizes) time.Duration { return 5 * time.Minute },
			run: func(ctx context.Context, _ System, _ *Rig, sz Sizes) ([]float64, error) {
				return RendezvousScale(ctx, sz)
			},
		},
		relayScenario(), // relay.go
	}, clusterScenarios()...) // cluster.go
}

// ScenarioNames lists the scenario names -only matches, in order.
func ScenarioNames() []string {
	var names []string
	for _, s := range plan() {
		names = append(names, s.name)
	}
	return names
}

// Run runs the plan for every system, alternating systems within each
// repetition, and returns the report. It fails only if no scenario could be
// run at all; a scenario that fails for one system gets an error cell.
func Run(ctx context.Context, opts Options) (*Report, error) {
	mode := opts.Mode
	if mode == "" {
		mode = ModeDefault
	}
	sz, err := SizesFor(mode)
	if err != nil {
		return nil, err
	}
	if opts.Sizes != nil {
		sz = *opts.Sizes
	}
	emulatedRTT = opts.RTT
	countDatagrams = opts.CountDatagrams
	defer func() { emulatedRTT, countDatagrams = 0, false }()
	systems := opts.Systems
	if systems == nil {
		systems = Systems
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	rep := &Report{Machine: ThisMachine(), Mode: mode, Sizes: sz, Started: time.Now(), Systems: systems, RTTms: float64(opts.RTT) / float64(time.Millisecond)}

	var todo []scenario
	needRig := false
	for _, s := range plan() {
		if opts.Only == nil || opts.Only.MatchString(s.name) {
			todo = append(todo, s)
			needRig = needRig || s.rig
		}
	}
	if len(todo) == 0 {
		return nil, fmt.Errorf("bench: no scenario matches (have %s)", strings.Join(ScenarioNames(), ", "))
	}

	rigs := make(map[System]*Rig)
	rigErr := make(map[System]error)
	if needRig {
		for _, sys := range systems {
			t := time.Now()
			env, err := NewEnv(ctx, sys)
			if err != nil {
				rigErr[sys] = err
				fmt.Fprintf(progress, "setup %-8s failed: %v\n", sys, err)
				continue
			}
			rigs[sys] = NewRig(env)
			fmt.Fprintf(progress, "setup %-8s %v\n", sys, time.Since(t).Round(time.Millisecond))
		}
		defer func() {
			for _, r := range rigs {
				r.Close()
			}
		}()
	}

	for _, s := range todo {
		reps := sz.Reps
		if s.once || reps < 1 {
			reps = 1
		}
		vals := make(map[System][][]float64)
		errs := make(map[System]error)
		applies := func(sys System) bool { return s.only == nil || contains(s.only, sys) }
		for i := range reps {
			for j := range systems {
				sys := systems[(i+j)%len(systems)]
				if !applies(sys) || errs[sys] != nil {
					continue
				}
				if s.rig && rigs[sys] == nil {
					errs[sys] = rigErr[sys]
					continue
				}
				sctx, cancel := context.WithTimeout(ctx, s.timeout(sz))
				t := time.Now()
				v, err := s.run(sctx, sys, rigs[sys], sz)
				cancel()
				if err == nil && ctx.Err() != nil {
					err = ctx.Err()
				}
				if err != nil {
					errs[sys] = err
					fmt.Fprintf(progress, "%-14s %-8s rep %d: %v\n", s.name, sys, i+1, err)
					continue
				}
				vals[sys] = append(vals[sys], v)
				fmt.Fprintf(progress, "%-14s %-8s rep %d: %s (%v)\n", s.name, sys, i+1, fmtValues(v), time.Since(t).Round(time.Millisecond))
			}
		}
		for m, md := range s.metrics {
			row := Row{Scenario: s.name, Title: s.title(sz), Metric: md.name, Better: md.better, Cells: make(map[System]Cell)}
			for _, sys := range systems {
				var c Cell
				switch {
				case !applies(sys):
					c.NA = s.onlyWhy
				case errs[sys] != nil && errors.Is(errs[sys], ErrNotSupported):
					c.NA = errs[sys].Error()
				case errs[sys] != nil:
					c.Error = errs[sys].Error()
				default:
					var xs []float64
					for _, v := range vals[sys] {
						xs = append(xs, v[m])
					}
					v := median(xs)
					if math.IsNaN(v) || math.IsInf(v, 0) {
						c.Error = "no finite value"
					} else {
						c.Value = &v
					}
				}
				row.Cells[sys] = c
			}
			a, q := row.Cells[Agentnet].Value, row.Cells[QUIC].Value
			if a != nil && q != nil && *q != 0 {
				r := *a / *q
				row.Ratio = &r
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	rep.Seconds = time.Since(rep.Started).Seconds()
	return rep, nil
}

func contains(s []System, x System) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// WriteTable prints the report as one table with the machine on top and the
// errors, if any, below.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "agentnet bench, mode %s, %s, %.0f s\n", r.Mode, r.Started.Format(time.RFC3339), r.Seconds)
	fmt.Fprintf(w, "machine: %s, %d CPUs, GOMAXPROCS %d, %s %s/%s, kernel %s, quic-go %s, rmem_max %s wmem_max %s\n",
		m.CPUModel, m.NumCPU, m.GOMAXPROCS, m.GoVersion, m.GOOS, m.GOARCH, m.Kernel, m.QUICGo, m.RmemMax, m.WmemMax)
	if r.RTTms > 0 {
		fmt.Fprintf(w, "emulated RTT %g ms between agentnet's and raw quic-go's nodes (rendezvous: half)\n", r.RTTms)
	}
	fmt.Fprintf(w, "127.0.0.1, both ends in one process unless noted; medians of %d repetitions, systems alternating\n\n", r.Sizes.Reps)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "scenario\tmetric")
	for _, s := range r.Systems {
		fmt.Fprintf(tw, "\t%s", s)
	}
	fmt.Fprint(tw, "\tagentnet/quic-go\n")
	var notes []string
	prev := ""
	for _, row := range r.Rows {
		title := row.Title
		if title == prev {
			title = ""
		}
		prev = row.Title
		fmt.Fprintf(tw, "%s\t%s", title, row.Metric)
		for _, s := range r.Systems {
			c := row.Cells[s]
			switch {
			case c.Value != nil:
				fmt.Fprintf(tw, "\t%s", fmtNum(*c.Value))
			case c.NA != "":
				fmt.Fprintf(tw, "\tn/a (%s)", c.NA)
			default:
				notes = append(notes, fmt.Sprintf("[%d] %s, %s: %s", len(notes)+1, row.Scenario, s, c.Error))
				fmt.Fprintf(tw, "\terror [%d]", len(notes))
			}
		}
		if row.Ratio != nil {
			fmt.Fprintf(tw, "\t%.2f×\n", *row.Ratio)
		} else {
			fmt.Fprint(tw, "\t-\n")
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	return nil
}

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 100 || a == 0:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func fmtValues(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmtNum(x)
	}
	return strings.Join(s, " ")
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
