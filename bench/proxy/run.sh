#!/usr/bin/env bash
# The model proxy's added latency and throughput (issue 12), side by side with the LiteLLM proxy
# (`litellm[proxy]` from PyPI) in one run, on loopback, in front of a fast mock upstream
# (crates/offswitch-proxy/examples/bench_upstream.rs):
#  - direct to the upstream;
#  - through `offswitch proxy`, recording every exchange into its audit log, with a policy on
#    (tool-call and prompt rules, a token budget);
#  - through LiteLLM (its proxy server, logging off, two workers: one per core).
# Chat completions, streamed (20 chunks) and not, at 1, 16 and 100 concurrent clients, each for
# a fixed time (crates/offswitch-proxy/examples/bench_load.rs): at once (the most the machine
# can push through, where latency is mostly queueing), and paced (the upstream sends the 20
# chunks 20 ms apart, like a hosted model streaming 50 tokens a second; the added latency is
# what an agent waiting on its model sees): with the clients' starts spread over one reply, as
# independent agents' requests come, and at 100 clients also in lockstep (every request of the
# hundred arrives in one burst). Writes bench/RESULTS-proxy.md.
#
#   bench/proxy/run.sh [--seconds N]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/proxy/common.sh
root=$(pwd)
seconds=10
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

litellm_version=1.100.0
venv=/var/tmp/offswitch-bench-litellm
if [ ! -x "$venv/bin/litellm" ] || [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')" != "$litellm_version" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "litellm[proxy]==$litellm_version"
fi

cargo build --release -q -p offswitch-cli
cargo build --release -q -p offswitch-proxy --examples
offswitch=$root/target/release/offswitch
examples=$root/target/release/examples
work=$(mktemp -d /var/tmp/offswitch-proxy-bench.XXXXXX)
trap cleanup EXIT
export OFFSWITCH_HOME=$work/home

# Start a server whose first stdout or stderr line names its address, and wait for it.
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 600); do
        if grep -q "$pattern" "$file" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $pattern in $file" >&2
    cat "$file" >&2
    exit 1
}

"$examples/bench_upstream" 127.0.0.1:4610 >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_for "$work/upstream.log" "listening on"
upstream=http://127.0.0.1:4610/v1

echo -n "sk-bench-session-token" >"$work/token"
proxy_config "$work/proxy.toml" 127.0.0.1:4611 "$upstream" "$work/token"
"$offswitch" proxy --policy "$work/proxy.toml" --audit "$work/proxy.audit" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_for "$work/proxy.log" "listening on"

cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: m
    litellm_params:
      model: openai/m
      api_base: $upstream
      api_key: sk-upstream
  - model_name: m-paced
    litellm_params:
      model: openai/m-paced
      api_base: $upstream
      api_key: sk-upstream
litellm_settings:
  drop_params: true
  set_verbose: false
  turn_off_message_logging: true
general_settings:
  master_key: sk-bench-session-token
YAML
LITELLM_LOG=ERROR "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port 4612 \
    --num_workers 2 >"$work/litellm.log" 2>&1 &
pids+=($!)
wait_for "$work/litellm.log" "Uvicorn running\|Application startup complete"

results=$work/results.jsonl
: >"$results"
for mode in whole stream paced paced-lockstep; do
    for clients in 1 16 100; do
        [ "$mode" = paced-lockstep ] && [ "$clients" != 100 ] && continue
        for target in direct offswitch litellm; do
            case "$target" in
                direct) url=$upstream ;;
                offswitch) url=http://127.0.0.1:4611/v1 ;;
                litellm) url=http://127.0.0.1:4612/v1 ;;
            esac
            line=$("$examples/bench_load" "$url" sk-bench-session-token "$clients" "$seconds" "$mode")
            echo "{\"mode\": \"$mode\", \"clients\": $clients, \"target\": \"$target\", \"result\": $line}" >>"$results"
            echo "$mode $clients $target $line" >&2
        done
    done
done
# Stop the proxy (SIGTERM: it finishes what is in flight and seals its log), then verify the log.
kill -TERM "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
records=$("$offswitch" audit verify "$work/proxy.audit" 2>&1 | tail -1 || true)

out=bench/RESULTS-proxy.md
{
    echo "Command: \`bench/proxy/run.sh --seconds $seconds\`, run $(date -u +%Y-%m-%dT%H:%MZ);"
    echo "LiteLLM $litellm_version (litellm[proxy], 2 workers); load $(cut -d' ' -f1-3 /proc/loadavg) at the end."
    echo "The offswitch proxy's audit log after the run: $records"
    echo
    python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["mode"], r["clients"], r["target"]): r["result"] for r in rows}
print("Latencies from the request to the reply's last byte; for streams also to its first byte.")
print()
print("| mode | clients | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | first byte p50 / p99 ms | added first byte p50 / p99 ms | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (mode, clients, target), r in by.items():
    direct = by[(mode, clients, "direct")]
    added = lambda key: "" if target == "direct" else f"{r[key] - direct[key]:+.2f}"
    first = f"{r['first_p50_ms']:.2f} / {r['first_p99_ms']:.2f}" if mode != "whole" else ""
    added_first = f"{added('first_p50_ms')} / {added('first_p99_ms')}" if mode != "whole" and target != "direct" else ""
    print(f"| {mode} | {clients} | {target} | {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added('p50_ms')} | {added('p99_ms')} | {first} | {added_first} | {r['errors']} |")
print()
print("Paced streams, event by event: each event carries the time the upstream handed it over; its transit is")
print("from then until the client read it, and the end's is from the last event's send to the client's last byte")
print("(the pacing's timer jitter is out of both). A proxy that rewrites events drops the stamp: no figure.")
print()
print("| mode | clients | target | event transit p50 / p99 ms | added p50 / p99 ms | end transit p50 / p99 ms | added p50 / p99 ms |")
print("|---|---|---|---|---|---|---|")
for (mode, clients, target), r in by.items():
    if not mode.startswith("paced"):
        continue
    direct = by[(mode, clients, "direct")]
    def pair(prefix, of=r):
        p50, p99 = of.get(f"{prefix}_p50_ms"), of.get(f"{prefix}_p99_ms")
        return None if p50 is None or p50 != p50 else (p50, p99)
    def added(prefix):
        mine, theirs = pair(prefix), pair(prefix, direct)
        if target == "direct" or mine is None or theirs is None:
            return ""
        return f"{mine[0] - theirs[0]:+.3f} / {mine[1] - theirs[1]:+.3f}"
    show = lambda p: "-" if p is None else f"{p[0]:.3f} / {p[1]:.3f}"
    print(f"| {mode} | {clients} | {target} | {show(pair('event_transit'))} | {added('event_transit')} | {show(pair('end_transit'))} | {added('end_transit')} |")
print()
for mode in ("whole", "stream", "paced", "paced-lockstep"):
    for clients in (1, 16, 100):
        if (mode, clients, "offswitch") not in by:
            continue
        o, l = by[(mode, clients, "offswitch")], by[(mode, clients, "litellm")]
        ratio = o["throughput_rps"] / l["throughput_rps"] if l["throughput_rps"] else float("inf")
        print(f"- {mode}, {clients} clients: offswitch {o['throughput_rps']:.0f} req/s, LiteLLM {l['throughput_rps']:.0f} req/s ({ratio:.1f}x)")
PY
} >"$out"
cat "$out"
