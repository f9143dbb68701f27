// Command peers measures go-libp2p (QUIC and TCP) beside the raw quic-go it
// is built on, with the workloads of agentnet's bench, so that the README can
// compare each system's ratio to its own raw quic-go: go-libp2p v0.52 needs
// quic-go v0.64 while agentnet uses v0.65, so they cannot share a binary (or
// a module: this directory has its own go.mod, outside the main module).
//
//	cd bench/peers && go run .                 # every scenario
//	cd bench/peers && go run . -only rpc -json
//
// bench/peers/compare.sh runs it alternately with agentnet's bench and
// prints both tables; compare ratios, not absolute figures, across the two.
//
// Scenarios (both ends in this process, 127.0.0.1, medians of -reps
// repetitions, systems alternating):
//
//   - rpc: a new stream per request: open, write 1 KiB and close the write
//     side, read the 1 KiB answer to its end; one client, one after another
//     (req/s, process CPU per request);
//   - rpc100: the same from 100 client peers at once, each on its own
//     connection, each sequential (req/s total, p50/p99 latency);
//   - setup: first contact: a new client (prepared untimed) connects and
//     opens a stream, and the time runs until the first echoed byte;
//   - bulk: 64 MiB on one stream (MB/s, CPU-s/GiB);
//   - pingpong: 1 byte echoed on one open stream (p50/p99).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// system is one transport under test.
type system interface {
	name() string
	// newClient returns a client not yet connected to the server.
	newClient(ctx context.Context) (client, error)
	close() error
}

// client is one peer of the server.
type client interface {
	// connect makes sure a connection to the server exists.
	connect(ctx context.Context) error
	// stream opens a new stream to the server's handler for proto.
	stream(ctx context.Context, proto string) (io.ReadWriteCloser, error)
	close() error
}

// The server's handlers, by protocol name.
const (
	protoRPC  = "/bench/rpc/1"  // read 1 KiB, answer 1 KiB, close
	protoEcho = "/bench/echo/1" // echo until EOF
	protoSink = "/bench/sink/1" // read until EOF, answer one byte
)

const rpcSize = 1024

// serve runs the handler for proto on s, and closes s.
func serve(proto string, s io.ReadWriteCloser) {
	defer s.Close()
	switch proto {
	case protoRPC:
		buf := make([]byte, rpcSize+1)
		if _, err := io.ReadFull(s, buf[:rpcSize]); err != nil {
			return
		}
		if n, err := s.Read(buf[rpcSize:]); n != 0 || err != io.EOF { // the request's end
			return
		}
		s.Write(buf[:rpcSize])
	case protoEcho:
		io.Copy(s, s)
	case protoSink:
		if _, err := io.Copy(io.Discard, s); err == nil {
			s.Write([]byte{1})
		}
	}
}

// halfCloser is a stream that can close its write side only.
type halfCloser interface{ CloseWrite() error }

func closeWrite(s io.ReadWriteCloser) error {
	if h, ok := s.(halfCloser); ok {
		return h.CloseWrite()
	}
	return s.Close()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rpcOnce(ctx context.Context, c client, buf []byte) error {
	s, err := c.stream(ctx, protoRPC)
	if err != nil {
		return err
	}
	defer s.Close()
	if _, err := s.Write(buf[:rpcSize]); err != nil {
		return err
	}
	if err := closeWrite(s); err != nil { // the request's end, with its last bytes
		return err
	}
	if _, err := io.ReadFull(s, buf[:rpcSize]); err != nil {
		return fmt.Errorf("rpc answer: %w", err)
	}
	if n, err := s.Read(buf[:1]); n != 0 || err != io.EOF { // the answer's end
		return fmt.Errorf("rpc answer: want its end, got %d bytes, %v", n, err)
	}
	return nil
}

// result is one scenario's figures for one system: metric → value.
type result map[string]float64

func runRPC(ctx context.Context, sys system, d time.Duration) (result, error) {
	c, err := sys.newClient(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	buf := make([]byte, rpcSize)
	if err := rpcOnce(ctx, c, buf); err != nil { // warm
		return nil, err
	}
	n, cpu0, t0 := 0, cpuTime(), time.Now()
	for time.Since(t0) < d {
		if err := rpcOnce(ctx, c, buf); err != nil {
			return nil, err
		}
		n++
	}
	wall, cpu := time.Since(t0), cpuTime()-cpu0
	return result{"req/s": float64(n) / wall.Seconds(), "CPU µs/req": float64(cpu.Microseconds()) / float64(n)}, nil
}

func runRPC100(ctx context.Context, sys system, d time.Duration) (result, error) {
	const peers = 100
	cs := make([]client, 0, peers)
	defer func() {
		for _, c := range cs {
			c.close()
		}
	}()
	for range peers {
		c, err := sys.newClient(ctx)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
		if err := c.connect(ctx); err != nil {
			return nil, err
		}
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		lat  []time.Duration
		ferr error
	)
	cpu0, t0 := cpuTime(), time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, rpcSize)
			var mine []time.Duration
			for time.Since(t0) < d {
				s := time.Now()
				if err := rpcOnce(ctx, c, buf); err != nil {
					mu.Lock()
					ferr = err
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(s))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	wall, cpu := time.Since(t0), cpuTime()-cpu0
	if ferr != nil {
		return nil, ferr
	}
	return result{"req/s": float64(len(lat)) / wall.Seconds(), "CPU µs/req": float64(cpu.Microseconds()) / float64(len(lat)),
		"p50 µs": quantile(lat, 0.5), "p99 µs": quantile(lat, 0.99)}, nil
}

func runSetup(ctx context.Context, sys system, n int) (result, error) {
	var lat []time.Duration
	for range n {
		c, err := sys.newClient(ctx)
		if err != nil {
			return nil, err
		}
		t := time.Now()
		err = func() error {
			if err := c.connect(ctx); err != nil {
				return err
			}
			s, err := c.stream(ctx, protoEcho)
			if err != nil {
				return err
			}
			defer s.Close()
			b := []byte{7}
			if _, err := s.Write(b); err != nil {
				return err
			}
			_, err = io.ReadFull(s, b)
			return err
		}()
		lat = append(lat, time.Since(t))
		c.close()
		if err != nil {
			return nil, err
		}
	}
	return result{"p50 µs": quantile(lat, 0.5), "p99 µs": quantile(lat, 0.99)}, nil
}

func runBulk(ctx context.Context, sys system, size int) (result, error) {
	c, err := sys.newClient(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	s, err := c.stream(ctx, protoSink)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	buf := make([]byte, 64<<10)
	cpu0, t0 := cpuTime(), time.Now()
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := s.Write(buf); err != nil {
			return nil, err
		}
	}
	if err := closeWrite(s); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(s, buf[:1]); err != nil {
		return nil, fmt.Errorf("bulk ack: %w", err)
	}
	wall, cpu := time.Since(t0), cpuTime()-cpu0
	return result{"MB/s": float64(size) / wall.Seconds() / 1e6, "CPU-s/GiB": cpu.Seconds() / (float64(size) / (1 << 30))}, nil
}

func runPingPong(ctx context.Context, sys system, n int) (result, error) {
	c, err := sys.newClient(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	s, err := c.stream(ctx, protoEcho)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	b := []byte{0}
	lat := make([]time.Duration, 0, n)
	for i := range n + 10 {
		t := time.Now()
		if _, err := s.Write(b); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(s, b); err != nil {
			return nil, err
		}
		if i >= 10 {
			lat = append(lat, time.Since(t))
		}
	}
	return result{"p50 µs": quantile(lat, 0.5), "p99 µs": quantile(lat, 0.99)}, nil
}

func quantile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[int(q*float64(len(s)-1))].Nanoseconds()) / 1e3
}

type scenario struct {
	name, title string
	metrics     []string
	run         func(ctx context.Context, sys system, quick bool) (result, error)
}

var scenarios = []scenario{
	{"rpc", "new stream per 1 KiB request/response, sequential", []string{"req/s", "CPU µs/req"},
		func(ctx context.Context, s system, q bool) (result, error) {
			return runRPC(ctx, s, pick(q, 300, 1500)*time.Millisecond)
		}},
	{"rpc100", "same, 100 peers at once", []string{"req/s", "CPU µs/req", "p50 µs", "p99 µs"},
		func(ctx context.Context, s system, q bool) (result, error) {
			return runRPC100(ctx, s, pick(q, 500, 2000)*time.Millisecond)
		}},
	{"setup", "first contact → first echoed byte", []string{"p50 µs", "p99 µs"},
		func(ctx context.Context, s system, q bool) (result, error) {
			return runSetup(ctx, s, int(pick(q, 10, 50)))
		}},
	{"bulk", "bulk 64 MiB, one stream", []string{"MB/s", "CPU-s/GiB"},
		func(ctx context.Context, s system, q bool) (result, error) {
			return runBulk(ctx, s, int(pick(q, 16, 64))<<20)
		}},
	{"pingpong", "ping-pong 1 B, stream", []string{"p50 µs", "p99 µs"},
		func(ctx context.Context, s system, q bool) (result, error) {
			return runPingPong(ctx, s, int(pick(q, 200, 1000)))
		}},
}

func pick(quick bool, q, full time.Duration) time.Duration {
	if quick {
		return q
	}
	return full
}

var systems = []struct {
	name  string
	start func(ctx context.Context) (system, error)
}{
	{"quic-go", startQUIC},
	{"libp2p-quic", func(ctx context.Context) (system, error) { return startLibp2p(ctx, "quic") }},
	{"libp2p-tcp", func(ctx context.Context) (system, error) { return startLibp2p(ctx, "tcp") }},
}

func main() {
	only := flag.String("only", "", "regexp of scenario names to run (rpc, rpc100, setup, bulk, pingpong)")
	reps := flag.Int("reps", 3, "repetitions per system (the median is reported)")
	quick := flag.Bool("quick", false, "short runs")
	asJSON := flag.Bool("json", false, "print JSON")
	flag.Parse()
	re, err := regexp.Compile(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers: -only:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	type row struct {
		Scenario string                        `json:"scenario"`
		Title    string                        `json:"title"`
		Figures  map[string]map[string]float64 `json:"figures"` // system → metric → median
		Ratios   map[string]map[string]float64 `json:"ratios"`  // system → metric → system / quic-go
	}
	var rows []row
	for _, sc := range scenarios {
		if !re.MatchString(sc.name) {
			continue
		}
		samples := map[string]map[string][]float64{}
		for rep := range *reps {
			for i := range systems {
				s := systems[(i+rep)%len(systems)] // alternate the order
				sys, err := s.start(ctx)
				if err != nil {
					fmt.Fprintf(os.Stderr, "peers: %s: %v\n", s.name, err)
					os.Exit(1)
				}
				runtime.GC()
				r, err := sc.run(ctx, sys, *quick)
				sys.close()
				if err != nil {
					fmt.Fprintf(os.Stderr, "peers: %s %s: %v\n", sc.name, s.name, err)
					os.Exit(1)
				}
				if samples[s.name] == nil {
					samples[s.name] = map[string][]float64{}
				}
				for k, v := range r {
					samples[s.name][k] = append(samples[s.name][k], v)
				}
				fmt.Fprintf(os.Stderr, "%-9s %-12s rep %d: %v\n", sc.name, s.name, rep+1, r)
			}
		}
		rw := row{Scenario: sc.name, Title: sc.title, Figures: map[string]map[string]float64{}, Ratios: map[string]map[string]float64{}}
		for sysName, m := range samples {
			rw.Figures[sysName] = map[string]float64{}
			for k, v := range m {
				sort.Float64s(v)
				rw.Figures[sysName][k] = v[len(v)/2]
			}
		}
		for sysName, m := range rw.Figures {
			rw.Ratios[sysName] = map[string]float64{}
			for k, v := range m {
				if base := rw.Figures["quic-go"][k]; base != 0 {
					rw.Ratios[sysName][k] = v / base
				}
			}
		}
		rows = append(rows, rw)
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(rows)
		return
	}
	fmt.Printf("go-libp2p beside its raw quic-go (%s), 127.0.0.1, both ends in one process, medians of %d, systems alternating\n", quicVersion(), *reps)
	tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tmetric\tquic-go\tlibp2p-quic\tlibp2p-tcp\tlibp2p-quic/quic-go\tlibp2p-tcp/quic-go")
	for _, rw := range rows {
		for i, sc := range scenarios {
			if sc.name != rw.Scenario {
				continue
			}
			for j, m := range scenarios[i].metrics {
				title := ""
				if j == 0 {
					title = rw.Title
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f×\t%.2f×\n", title, m,
					num(rw.Figures["quic-go"][m]), num(rw.Figures["libp2p-quic"][m]), num(rw.Figures["libp2p-tcp"][m]),
					rw.Ratios["libp2p-quic"][m], rw.Ratios["libp2p-tcp"][m])
			}
		}
	}
	tw.Flush()
}

func num(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func quicVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "quic-go ?"
	}
	var out []string
	for _, d := range bi.Deps {
		if d.Path == "github.com/quic-go/quic-go" || d.Path == "github.com/libp2p/go-libp2p" {
			out = append(out, strings.TrimPrefix(d.Path, "github.com/")+" "+d.Version)
		}
	}
	return strings.Join(out, ", ")
}
