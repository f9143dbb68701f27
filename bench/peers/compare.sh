#!/usr/bin/env bash
# Runs agentnet's bench (agentnet beside raw quic-go v0.65) and this
# directory's (go-libp2p QUIC and TCP beside raw quic-go v0.64) alternately,
# ROUNDS times (default 2), and prints every table. Compare each system's
# ratio to its own raw quic-go: absolute figures move with the machine's
# load between runs.
#
#   bench/peers/compare.sh            # from the repository root
#   ROUNDS=3 bench/peers/compare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-2}
# The scenarios of agentnet's bench that this directory mirrors.
only=${ONLY:-'^(stream-per-req|stream-per-req-peers|setup-first|bulk|pingpong)$'}
go build -o /tmp/agentnet-bench.$$ ./bench/cmd/agentnet-bench
(cd bench/peers && go build -o /tmp/agentnet-peers.$$ .)
trap 'rm -f /tmp/agentnet-bench.$$ /tmp/agentnet-peers.$$' EXIT
for r in $(seq "$rounds"); do
  echo "== round $r: agentnet bench"
  /tmp/agentnet-bench.$$ -only "$only" -systems agentnet,quic-go 2>/dev/null
  echo "== round $r: go-libp2p (bench/peers)"
  /tmp/agentnet-peers.$$ 2>/dev/null
done
