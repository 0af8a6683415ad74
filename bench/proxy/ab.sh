#!/usr/bin/env bash
# Two builds of `offswitch proxy` side by side, interleaved round by round in front of the mock
# upstream: throughput, latency, and the proxy's CPU time per exchange (user + system, from
# /proc/PID/stat), which is steadier than throughput on a shared machine. For checking that a
# change to the proxy's hot path helps.
#
#   bench/proxy/ab.sh OFFSWITCH_A OFFSWITCH_B [--mode whole|stream|paced|paced-lockstep] [--clients N]
#                     [--seconds N] [--rounds N]      (defaults: stream, 100, 5, 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/proxy/common.sh
[ $# -ge 2 ] || { echo "usage: $0 OFFSWITCH_A OFFSWITCH_B [--mode M] [--clients N] [--seconds N] [--rounds N]" >&2; exit 2; }
a=$(realpath "$1") b=$(realpath "$2"); shift 2
mode=stream clients=100 seconds=5 rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) mode=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cargo build --release -q -p offswitch-proxy --examples
examples=$(pwd)/target/release/examples
work=$(mktemp -d /var/tmp/offswitch-proxy-ab.XXXXXX)
trap cleanup EXIT

"$examples/bench_upstream" 127.0.0.1:4630 >"$work/upstream.log" 2>&1 &
pids+=($!)
echo -n "sk-bench-session-token" >"$work/token"
start() { # binary port name
    proxy_config "$work/$3.toml" "127.0.0.1:$2" http://127.0.0.1:4630/v1 "$work/token"
    OFFSWITCH_HOME=$work/home-$3 "$1" proxy --policy "$work/$3.toml" --audit "$work/$3.audit" \
        >"$work/$3.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do grep -q "listening on" "$work/$3.log" 2>/dev/null && return; sleep 0.1; done
    echo "proxy $3 did not start:" >&2; cat "$work/$3.log" >&2; exit 1
}
start "$a" 4631 A
pid_a=${pids[-1]}
start "$b" 4632 B
pid_b=${pids[-1]}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "A = $a"
echo "B = $b"
echo "$mode, $clients clients, $seconds s a cell, $rounds rounds"
for _ in $(seq "$rounds"); do
    for target in direct A B; do
        case "$target" in
            direct) url=http://127.0.0.1:4630/v1 pid= ;;
            A) url=http://127.0.0.1:4631/v1 pid=$pid_a ;;
            B) url=http://127.0.0.1:4632/v1 pid=$pid_b ;;
        esac
        before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        line=$("$examples/bench_load" "$url" sk-bench-session-token "$clients" "$seconds" "$mode")
        after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        python3 - "$target" "$before" "$after" "$(getconf CLK_TCK)" "$line" <<'PY'
import json, sys
target, before, after, hz, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
cpu = "" if target == "direct" else f"  CPU/exchange {(after - before) / hz / max(r['requests'], 1) * 1e6:6.0f} us"
transit = "" if r.get("event_transit_p50_ms") is None else f"  event transit p50 {r['event_transit_p50_ms']:.3f} p99 {r['event_transit_p99_ms']:.3f} end p50 {r['end_transit_p50_ms']:.3f} ms"
print(f"{target:6} {r['throughput_rps']:8.0f} req/s  p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  first byte p50 {r['first_p50_ms']:6.2f} ms{cpu}{transit}")
PY
    done
done
