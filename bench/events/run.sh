#!/usr/bin/env bash
# Event capture overhead (issue 10): an exec-heavy and a file-heavy workload inside a real
# sandbox with the event stream off, on, and under strace (the familiar peer), and the file-heavy
# one also with a bare fanotify group whose events are thrown away (the kernel's floor),
# interleaved in one run; each recorded run is checked for lost or missing events. Writes
# bench/RESULTS-events.md. Needs root (cgroups, eBPF, fanotify); installs strace if missing.
#
#   bench/events/run.sh [--runs N]     (default: 10)
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v strace >/dev/null; then
    apt-get update
    apt-get install -y strace
fi

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--runs 10)

out=bench/RESULTS-events.md
tmp=$(mktemp)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cargo bench -p offswitch-sandbox --bench events -- "${args[@]}" | tee "$tmp"
{
    cat "$tmp"
    echo "Command: \`bench/events/run.sh ${args[*]}\` (release build via \`cargo bench -p offswitch-sandbox"
    echo "--bench events\`), run $(date -u +%Y-%m-%dT%H:%MZ) as root, $(strace -V | head -1). The machine (2 vCPUs)"
    echo "was shared with other engineers' builds: load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after."
} >"$out"
rm -f "$tmp"
echo "wrote $out"
