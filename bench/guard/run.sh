#!/usr/bin/env bash
# The guard's overhead and kill latency (issue 11), side by side with Anthropic's sandbox
# runtime (`srt`, @anthropic-ai/sandbox-runtime from npm) in one run:
#  1. a real workload (build a 41-file C program with make -j2, run a 400-test Python suite)
#     bare, under `offswitch guard` with every monitor on, and under srt, interleaved;
#  2. from a rule hit to zero processes against the 512-process adversary (fork bomb,
#     setsid daemons, signal ignorers), from the guard's own audit log.
# Writes bench/RESULTS-guard.md. Needs root; installs srt, socat and ripgrep if missing.
#
#   bench/guard/run.sh [--runs N] [--kills N]     (defaults: 7 and 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
runs=7
kills=20
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --kills) kills=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v socat >/dev/null || ! command -v rg >/dev/null || ! command -v bwrap >/dev/null; then
    apt-get update
    apt-get install -y socat ripgrep bubblewrap
fi
srt_version=0.0.83
if ! command -v srt >/dev/null || [ "$(srt --version 2>/dev/null)" != "$srt_version" ]; then
    npm install -g "@anthropic-ai/sandbox-runtime@$srt_version" >/dev/null 2>&1
fi

cargo build --release -q -p offswitch-cli
offswitch=$root/target/release/offswitch
work=$(mktemp -d /var/tmp/offswitch-guard-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OFFSWITCH_HOME=$work/home OFFSWITCH_GUARD_DIR=$work/control
cat >"$work/srt.json" <<JSON
{"network": {"allowedDomains": [], "deniedDomains": []},
 "filesystem": {"denyRead": [], "allowWrite": ["$work"], "denyWrite": []}}
JSON

times=$work/times.txt
: >"$times"
one() {
    local mode=$1 i=$2 dir=$work/p-$1-$2 status=0 start end
    python3 bench/guard/make_project.py "$dir"
    start=$(date +%s.%N)
    case "$mode" in
        bare) bash "$dir/workload.sh" >/dev/null 2>&1 || status=$? ;;
        guard) "$offswitch" guard --policy bench/guard/policy.toml --project "$dir" --no-stdin \
                   --name "bench-$i" --audit "$work/audit-$i" -- bash workload.sh >/dev/null 2>&1 || status=$? ;;
        srt) srt -s "$work/srt.json" -c "bash $dir/workload.sh" >/dev/null 2>&1 || status=$? ;;
    esac
    end=$(date +%s.%N)
    echo "$mode $(echo "$end - $start" | bc) $status" >>"$times"
    rm -rf "$dir"
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# One warm-up of each, not counted (caches, the release binary's first load of the BPF object).
for mode in bare guard srt; do one "$mode" warm; done
: >"$times"
for i in $(seq "$runs"); do
    for mode in bare guard srt; do one "$mode" "$i"; done
done

# Kill latency: the adversary, a builtin-only wait (no fork needed under the pid limit), then
# an exec of the marker without a fork.
adversary='cp /bin/true /tmp/trip-marker; for i in $(seq 20); do ( setsid sh -c '"'"'trap "" TERM HUP INT; exec sleep 1000'"'"' & ) ; done; for i in $(seq 20); do (trap "" TERM HUP INT QUIT USR1 USR2; exec sleep 1000) & done; bomb() { bomb & bomb & while :; do :; done; }; (bomb &) 2>/dev/null; end=$((SECONDS + 2)); while (( SECONDS < end )); do :; done; exec /tmp/trip-marker'
logs=()
for i in $(seq "$kills"); do
    "$offswitch" guard --policy bench/guard/kill-policy.toml --no-stdin --name "kill-$i" \
        --audit "$work/kill-$i" -- bash -c "$adversary" >/dev/null 2>&1 || true
    logs+=("$work/kill-$i")
done

out=bench/RESULTS-guard.md
{
    echo "### Workload: build a 41-file C program (make -j2) and run a 400-test Python suite"
    echo
    python3 bench/guard/stats.py times "$times" "$work"/audit-[0-9]*
    echo
    echo "### From a rule hit to zero processes, against the 512-process adversary"
    echo
    python3 bench/guard/stats.py kill "${logs[@]}"
    echo
    echo "Command: \`bench/guard/run.sh --runs $runs --kills $kills\`, run $(date -u +%Y-%m-%dT%H:%MZ) as root;"
    echo "offswitch release build; srt $(srt --version) ($(node --version), bwrap $(bwrap --version | cut -d' ' -f2));"
    echo "2 vCPUs; load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after."
} >"$out"
cat "$out"
