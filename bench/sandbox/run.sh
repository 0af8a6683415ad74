#!/usr/bin/env bash
# Sandbox benchmarks: offswitch against bwrap in one interleaved run, and kill latency.
# Writes bench/RESULTS-sandbox.md. Needs root (cgroups); installs bubblewrap if missing.
#
#   bench/sandbox/run.sh [--runs N] [--kill-runs N]     (defaults: 200 and 30)
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v bwrap >/dev/null; then
    apt-get update
    apt-get install -y bubblewrap
fi

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--runs 200 --kill-runs 30)

out=bench/RESULTS-sandbox.md
tmp=$(mktemp)
cargo bench -p offswitch-sandbox --bench sandbox -- "${args[@]}" | tee "$tmp"
{
    cat "$tmp"
    echo
    echo "Command: \`bench/sandbox/run.sh ${args[*]}\` (release build, \`cargo bench -p offswitch-sandbox --bench sandbox\`),"
    echo "run $(date -u +%Y-%m-%dT%H:%MZ), $(bwrap --version), load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
} >"$out"
rm -f "$tmp"
echo "wrote $out"
