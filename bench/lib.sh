# Shared by bench/compare.sh and bench/cluster.sh (sourced from the repository root):
# builds release, makes a throwaway directory, and stops every process in `pids` and
# removes the directory on exit.
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
# field NAME from kahu-bench's JSON on stdin
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
