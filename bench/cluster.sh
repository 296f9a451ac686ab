#!/usr/bin/env bash
# kahu as a 3-node cluster on this machine: persistent acquire latency at 1 connection,
# acquire+release throughput at 32 connections, and failover time.
#
#   bench/cluster.sh            # ~1 minute; DURATION=5 KILLS=20 bench/cluster.sh for more
#
# Builds release, starts three kahu-server nodes on free loopback ports with throwaway data
# directories, runs kahu-bench against them (each connection goes to a shard leader, with
# keys on the shards it leads), then kahu-bench --workload failover (which runs its own
# 3-node cluster and SIGKILLs shard leaders), stops everything it started, and prints one
# table. Nothing else on the machine is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-3}"
WARMUP="${WARMUP:-0.5}"
KILLS="${KILLS:-10}"

source bench/lib.sh

peers=""; clients=""
for id in 1 2 3; do
    client="127.0.0.1:$(free_port)"; peer="127.0.0.1:$(free_port)"
    peers="${peers:+$peers,}$id=$peer/$client"; clients="${clients:+$clients,}$client"
done
for id in 1 2 3; do
    client=$(echo "$clients" | cut -d, -f"$id")
    target/release/kahu-server --node-id "$id" --listen "$client" --peers "$peers" \
        --data-dir "$work/node-$id" --log-level warn >"$work/node-$id.out" 2>&1 &
    pids+=($!)
done

run() { "$bench" -c "$clients" --duration "$DURATION" --warmup "$WARMUP" --json "$@"; }
echo "measuring (each run ${DURATION}s)..." >&2
c1=$(run --durability persistent --connections 1)
c32=$(run --durability persistent --connections 32)
e1=$(run --durability ephemeral --connections 1)
failover=$("$bench" --workload failover --kills "$KILLS" --json)

pairs() { python3 -c "import json,sys; print(round(json.load(sys.stdin)['ops_per_sec']/2))"; }
printf '%-52s %12s\n' "3-node cluster, this machine" "value"
printf '%-52s %12s\n' "persistent acquire/release p50, 1 connection (µs)" "$(echo "$c1" | field p50_us)"
printf '%-52s %12s\n' "persistent acquire/release p99, 1 connection (µs)" "$(echo "$c1" | field p99_us)"
printf '%-52s %12s\n' "persistent acquire+release pairs/s, 32 connections" "$(echo "$c32" | pairs)"
printf '%-52s %12s\n' "ephemeral acquire/release p50, 1 connection (µs)" "$(echo "$e1" | field p50_us)"
printf '%-52s %12s\n' "failover p50 over $KILLS leader kills (ms)" "$(echo "$failover" | field p50_ms)"
printf '%-52s %12s\n' "failover max (ms)" "$(echo "$failover" | field max_ms)"
echo "errors: $(( $(echo "$c1" | field errors) + $(echo "$c32" | field errors) + $(echo "$e1" | field errors) ))"
