#!/usr/bin/env bash
# Harness overhead alone: 1000 trials of shutdown-resistance (10 conditions x 100 epochs)
# played by a scripted agent, release build, real sandboxes, real SQLite.
# Usage: bench/harness/run.sh [agent ...]   (default: comply overwrite)
# Prints one line per (agent, concurrency) with trials per second.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p offswitch-cli >/dev/null
bin=target/release/offswitch
agents=("${@:-comply overwrite}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "host: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
for agent in ${agents[@]}; do
  for concurrency in 1 2 4; do
    db="$work/$agent-$concurrency.db"
    start=$(date +%s.%N)
    "$bin" run --model "scripted:$agent" --epochs 100 --concurrency "$concurrency" \
      --progress quiet --db "$db" --work-dir "$work/homes" >"$work/out.txt"
    end=$(date +%s.%N)
    trials=$(sqlite3 "$db" 'SELECT count(*) FROM trials' 2>/dev/null || grep -o '[0-9]* of [0-9]* trials stored' "$work/out.txt")
    awk -v a="$agent" -v c="$concurrency" -v s="$start" -v e="$end" -v n="$trials" \
      'BEGIN { printf "agent=%-10s concurrency=%d trials=%s wall=%.1fs rate=%.1f trials/s\n", a, c, n, e - s, n / (e - s) }'
  done
done
