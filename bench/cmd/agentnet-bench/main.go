// Command agentnet-bench runs agentnet's benchmark scenarios against its
// baselines (raw quic-go, TCP, TLS 1.3 over TCP) on 127.0.0.1 and prints one
// table, or one JSON object with -json.
//
//	go run ./bench/cmd/agentnet-bench [-quick | -full] [-json] [-only regexp]
//
// The default run takes under two minutes, -quick under twenty seconds.
// Progress goes to stderr, the result to stdout.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"runtime/pprof"
	"strings"

	"github.com/agentnet/agentnet/bench"
)

func main() {
	bench.RunChildIfRequested()
	os.Exit(run())
}

func run() int {
	quick := flag.Bool("quick", false, "small sizes (about 1.5 min on 2 cores; what CI runs)")
	full := flag.Bool("full", false, "large sizes (100 000 rendezvous agents, more repetitions)")
	tiny := flag.Bool("tiny", false, "the smallest sizes (a smoke test)")
	asJSON := flag.Bool("json", false, "write one JSON object instead of the table")
	only := flag.String("only", "", "run only scenarios matching this regexp: "+strings.Join(bench.ScenarioNames(), ", "))
	systems := flag.String("systems", "", "comma-separated systems to run (default all: agentnet,quic-go,tcp,tls-tcp)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	quiet := flag.Bool("q", false, "no progress on stderr")
	rtt := flag.Duration("rtt", 0, "emulate this round trip time between agentnet's and raw quic-go's nodes (e.g. 10ms)")
	countDgrams := flag.Bool("count-datagrams", false, "count the UDP datagrams agentnet's and raw quic-go's nodes send (the req-datagrams row; their sockets become plain net.PacketConns, as with -rtt)")
	flag.Parse()

	opts := bench.Options{Mode: bench.ModeDefault, Progress: os.Stderr, RTT: *rtt, CountDatagrams: *countDgrams}
	switch {
	case *quick && *full:
		fmt.Fprintln(os.Stderr, "agentnet-bench: -quick and -full exclude each other")
		return 2
	case *quick:
		opts.Mode = bench.ModeQuick
	case *full:
		opts.Mode = bench.ModeFull
	case *tiny:
		opts.Mode = bench.ModeTiny
	}
	if *quiet {
		opts.Progress = nil
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fmt.Fprintf(os.Stderr, "agentnet-bench: -only: %v\n", err)
			return 2
		}
		opts.Only = re
	}
	if *systems != "" {
		for _, s := range strings.Split(*systems, ",") {
			opts.Systems = append(opts.Systems, bench.System(strings.TrimSpace(s)))
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "agentnet-bench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "agentnet-bench: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agentnet-bench: %v\n", err)
		return 1
	}
	if *asJSON {
		err = rep.WriteJSON(os.Stdout)
	} else {
		err = rep.WriteTable(os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "agentnet-bench: %v\n", err)
		return 1
	}
	return 0
}
