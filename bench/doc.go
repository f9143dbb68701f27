// Package bench measures agentnet against its baselines on 127.0.0.1: raw
// quic-go with the same quic.Config as quicnode, plain TCP, and TLS 1.3 over
// TCP. Each transport under test is an Env; the scenario functions in this
// package (bulk transfer, ping-pong, messages, connection setup, concurrent
// streams, idle cost, handshake refusal, rendezvous scale) run the same code
// against every Env, and the runner (Run, used by cmd/agentnet-bench) prints
// one table with the baselines beside agentnet, the ratio agentnet / raw
// quic-go, and the machine. The rendezvous on its stores (cluster.go) and the
// relay paths (relay.go: direct, UDP relay, relayed over TCP) are agentnet's
// alone.
//
// Both ends of every transfer run in this process, so CPU figures are process
// CPU (both ends) per unit of work. Scenarios whose cost must be charged to
// one side only (refused handshakes per core, rendezvous server memory, the
// relay's CPU per GiB) run that side in a child process: the same binary,
// re-executed with ChildEnv set (see RunChildIfRequested).
//
// Running it:
//
//	go run ./bench/cmd/agentnet-bench            # default, several minutes (etcd and relay rows included)
//	go run ./bench/cmd/agentnet-bench -quick     # about 1.5 min on 2 cores (CI)
//	go run ./bench/cmd/agentnet-bench -json -only 'bulk|pingpong' -systems agentnet,quic-go
//	go run ./bench/cmd/agentnet-bench -only bulk -systems agentnet -cpuprofile cpu.prof
//	go test -run XXX -bench . ./bench/           # the testing.B benchmarks
//
// Children write CPU profiles too when ChildProfileEnv is set.
//
// Wall-clock figures move with the load of the machine; compare systems by the
// ratios of one run, in which systems alternate and each figure is the median
// of several short repetitions.
package bench
