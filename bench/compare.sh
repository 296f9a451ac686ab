#!/usr/bin/env bash
# One table of kahu beside this machine's floor (kahu-bench --target echo) and Redis.
#
#   bench/compare.sh            # ~2 minutes; DURATION=5 bench/compare.sh for longer runs
#
# Builds release, starts a kahu server (and a Redis server where redis-server is installed:
# `apt-get install redis-server redis-tools`) on free loopback ports with throwaway data,
# runs the measurements, stops everything it started, and prints absolute numbers and
# ratios. Nothing else on the machine is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-3}"
WARMUP="${WARMUP:-0.5}"

cargo build --release --quiet --bin kahu-server --bin kahu-bench
bench=target/release/kahu-bench
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

target/release/kahu-server --listen 127.0.0.1:0 --data-dir "$work/kahu" --log-level warn >"$work/kahu.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/kahu.out" 2>/dev/null && break; sleep 0.1; done
kahu=$(sed -n 's/^kahu-server listening on //p' "$work/kahu.out")
[ -n "$kahu" ] || { echo "kahu-server did not start:"; cat "$work/kahu.out"; exit 1; }

# field NAME from kahu-bench's JSON on stdin
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
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

redis_c1="" redis_c50="" redis_p16=""
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$work/redis.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    rb() { redis-benchmark -h 127.0.0.1 -p "$port" -r 100000 --csv "$@" SET 'lock:__rand_int__' owner NX PX 10000 | tail -1; }
    # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    redis_c1=$(rb -c 1 -n 20000)
    redis_c50=$(rb -c 50 -n 200000)
    redis_p16=$(rb -c 1 -P 16 -n 400000)
else
    echo "redis-server not installed: Redis columns skipped (apt-get install redis-server redis-tools)" >&2
fi
csv() { echo "$1" | tr -d '"' | cut -d, -f"$2"; }

python3 - "$redis_c1" "$redis_c50" "$redis_p16" <<PY
import json, sys
r = {k: json.loads(v) for k, v in [
$(for k in "${!r[@]}"; do printf '    ("%s", r"""%s"""),\n' "$k" "${r[$k]}"; done)
]}
def redis(line, column):
    if not line: return None
    return float(line.replace('"', '').split(',')[column])
rc1_p50 = redis(sys.argv[1], 4); rc50 = redis(sys.argv[2], 1); rp16 = redis(sys.argv[3], 1)
def ratio(a, b): return f"{a / b:.2f}" if a and b else "-"
rows = []
e, k, p = r["echo-ephemeral-c1"], r["kahu-ephemeral-c1"], r["kahu-persistent-c1"]
rows.append(("p50 µs, 1 conn", e["p50_us"], k["p50_us"], ratio(k["p50_us"], e["p50_us"]), rc1_p50 and rc1_p50 * 1000, ratio(k["p50_us"], rc1_p50 and rc1_p50 * 1000), p["p50_us"]))
e, k, p = r["echo-ephemeral-c64"], r["kahu-ephemeral-c64"], r["kahu-persistent-c64"]
rows.append(("ops/s, 64 conns (Redis: 50)", e["ops_per_sec"], k["ops_per_sec"], ratio(k["ops_per_sec"], e["ops_per_sec"]), rc50, ratio(k["ops_per_sec"], rc50), p["ops_per_sec"]))
e, k, p = r["echo-ephemeral-p64"], r["kahu-ephemeral-p64"], r["kahu-persistent-p64"]
rows.append(("ops/s, 1 conn x 64 in flight (Redis: -P 16)", e["ops_per_sec"], k["ops_per_sec"], ratio(k["ops_per_sec"], e["ops_per_sec"]), rp16, ratio(k["ops_per_sec"], rp16), p["ops_per_sec"]))
c = r["contended"]; e1 = r["echo-ephemeral-c1"]
rows.append(("hand-off p99 µs, 16 waiters", e1["p99_us"], c["handoff_p99_us"], ratio(c["handoff_p99_us"], e1["p99_us"]), None, "-", "-"))
print("| measure | echo floor | kahu ephemeral | kahu/echo | Redis SET NX PX | kahu/Redis | kahu persistent |")
print("|---|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join("-" if v is None else (f"{v:,.0f}" if isinstance(v, float) else str(v)) for v in row) + " |")
h = r["hold"]
print(f"\nmemory: {h['bytes_per_lock']} bytes per held ephemeral lock ({h['locks']:,} locks)")
PY
