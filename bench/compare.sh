#!/usr/bin/env bash
# One table of kahu beside this machine's floor (kahu-bench --target echo) and Redis.
#
#   bench/compare.sh            # ~2 minutes; DURATION=5 bench/compare.sh for longer runs
#
# Builds release, starts a kahu server (and a Redis server where redis-server is installed:
# `apt-get install redis-server`) on free loopback ports with throwaway data, runs
# kahu-bench against the echo floor, kahu and Redis with the same settings, stops
# everything it started, and prints absolute numbers and ratios. Nothing else on the
# machine is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-3}"
WARMUP="${WARMUP:-0.5}"

source bench/lib.sh

target/release/kahu-server --listen 127.0.0.1:0 --data-dir "$work/kahu" --log-level warn >"$work/kahu.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/kahu.out" 2>/dev/null && break; sleep 0.1; done
kahu=$(sed -n 's/^kahu-server listening on //p' "$work/kahu.out")
[ -n "$kahu" ] || { echo "kahu-server did not start:"; cat "$work/kahu.out"; exit 1; }

run() { "$bench" -c "$kahu" --duration "$DURATION" --warmup "$WARMUP" --json "$@"; }

echo "measuring (each run ${DURATION}s)..." >&2
declare -A r
for target in echo kahu; do
    for durability in ephemeral persistent; do
        [ "$target" = echo ] && [ "$durability" = persistent ] && continue
        key="$target-$durability"
        r[$key-c1]=$(run --target "$target" --durability "$durability" --connections 1)
        r[$key-c64]=$(run --target "$target" --durability "$durability" --connections 64)
        r[$key-p64]=$(run --target "$target" --durability "$durability" --pipeline 64)
    done
done
r[contended]=$(run --workload contended --connections 16 --durability ephemeral)
r[hold]=$("$bench" -c "$kahu" --workload hold --locks 1000000 --durability ephemeral --ttl-ms 600000 --json)

if command -v redis-server >/dev/null; then
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$work/redis.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    # The same harness against Redis: SET key owner NX PX ttl, and an owner-checked delete.
    r[redis-c1]=$(run --target "redis://127.0.0.1:$port" --connections 1)
    r[redis-c64]=$(run --target "redis://127.0.0.1:$port" --connections 64)
    r[redis-p64]=$(run --target "redis://127.0.0.1:$port" --pipeline 64)
else
    echo "redis-server not installed: Redis columns skipped (apt-get install redis-server)" >&2
fi

python3 - <<PY
import json
r = {k: json.loads(v) for k, v in [
$(for k in "${!r[@]}"; do printf '    ("%s", r"""%s"""),\n' "$k" "${r[$k]}"; done)
]}
def ratio(a, b): return f"{a / b:.2f}" if a and b else "-"
def get(name, field): return r[name][field] if name in r else None
rows = []
for label, suffix, field in [("p50 µs, 1 conn", "c1", "p50_us"), ("ops/s, 64 conns", "c64", "ops_per_sec"), ("ops/s, 1 conn x 64 in flight", "p64", "ops_per_sec")]:
    e, k, p, d = get(f"echo-ephemeral-{suffix}", field), get(f"kahu-ephemeral-{suffix}", field), get(f"kahu-persistent-{suffix}", field), get(f"redis-{suffix}", field)
    rows.append((label, e, k, ratio(k, e), d, ratio(k, d), p))
rows.append(("hand-off p99 µs, 16 waiters", get("echo-ephemeral-c1", "p99_us"), get("contended", "handoff_p99_us"), ratio(get("contended", "handoff_p99_us"), get("echo-ephemeral-c1", "p99_us")), None, "-", None))
print("| measure | echo floor | kahu ephemeral | kahu/echo | Redis (no fsync) | kahu/Redis | kahu persistent |")
print("|---|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
h = r["hold"]
print(f"\nmemory: {h['bytes_per_lock']} bytes per held ephemeral lock ({h['locks']:,} locks)")
PY
