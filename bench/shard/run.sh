#!/usr/bin/env bash
# Sharded runs on one machine, merging, and what one concurrent trial costs.
#   rates      1000 shutdown-resistance trials (10 conditions x 100 epochs, a scripted agent,
#              release build, real sandboxes) split into 1, 2 and 4 shards run at once, each shard
#              a process with --concurrency 2: trials per second, and `offswitch merge` of them.
#   merge      `offswitch merge` of a 100,000-trial run in 4 shards (copies of a real trial, made
#              by the make_shards example): wall time and peak memory (/usr/bin/time).
#   resources  200 trials at --concurrency 1, 2 and 4: the harness's peak RSS, the sandboxes'
#              peak memory (their parent cgroup's high-water mark), and the machine's busy CPU
#              seconds per trial (everything: harness, sandboxes, kernel threads; run it on an
#              idle machine). Needs root (it resets the cgroup's high-water mark).
# Usage: bench/shard/run.sh [rates|merge|resources|all] [agent]   (default: all overwrite)
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
agent=${2:-overwrite}
cargo build --release -p offswitch-cli >/dev/null 2>&1
cargo build --release -p offswitch-merge --example make_shards >/dev/null 2>&1
bin=$PWD/target/release/offswitch
make_shards=$PWD/target/release/examples/make_shards
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "host: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"

rates() {
  for shards in 1 2 4; do
    dir="$work/s$shards"
    mkdir -p "$dir"
    start=$(date +%s.%N)
    pids=()
    for i in $(seq 1 "$shards"); do
      "$bin" run --model "scripted:$agent" --epochs 100 --concurrency 2 --progress quiet \
        --shard "$i/$shards" --run-id bench --db "$dir/shard-$i.db" --work-dir "$dir/homes" \
        >"$dir/out-$i.txt" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    end=$(date +%s.%N)
    merge_start=$(date +%s.%N)
    "$bin" merge "$dir/merged.db" "$dir"/shard-*.db >/dev/null
    merge_end=$(date +%s.%N)
    trials=$(sqlite3 "$dir/merged.db" 'SELECT count(*) FROM trials')
    awk -v s="$start" -v e="$end" -v n="$trials" -v k="$shards" -v ms="$merge_start" -v me="$merge_end" \
      'BEGIN { printf "shards=%d trials=%s wall=%.1fs rate=%.1f trials/s merge=%.2fs\n", k, n, e - s, n / (e - s), me - ms }'
    rm -rf "$dir"
  done
}

merge() {
  # The template: one real trial of the same agent.
  "$bin" run --model "scripted:$agent" --progress quiet --db "$work/template.db" \
    --work-dir "$work/homes" >/dev/null
  "$make_shards" "$work/template.db" "$work/big" 100000 4
  du -sh "$work/big" | awk '{ print "shard databases: " $1 }'
  /usr/bin/time -f "merge of 100000 trials: wall=%es peak_rss=%MKB" \
    "$bin" merge "$work/big/merged.db" "$work"/big/shard-*.db >/dev/null
  du -h "$work/big/merged.db" | awk '{ print "merged database: " $1 }'
  rm -rf "$work/big"
}

# The sandboxes' parent cgroup's memory high-water mark: cgroup v1's memory hierarchy, or v2's.
if [ -d /sys/fs/cgroup/memory/offswitch ]; then
  peak_file=/sys/fs/cgroup/memory/offswitch/memory.max_usage_in_bytes
else
  peak_file=/sys/fs/cgroup/offswitch/memory.peak
fi
# Busy CPU time of the whole machine in seconds (user, nice, system, irq, softirq, steal):
# the sandboxes' processes, the kernel threads that serve them (loop devices, ext4, the event
# recorder) and the harness. Run on an otherwise idle machine.
busy() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat; }

resources() {
  # Create the parent cgroups with one trial first.
  "$bin" run --model "scripted:$agent" --progress quiet --db "$work/warm.db" \
    --work-dir "$work/homes" >/dev/null
  for concurrency in 1 2 4; do
    echo 0 >"$peak_file" 2>/dev/null || echo "note: cannot reset $peak_file; the peak is since boot"
    busy_before=$(busy)
    /usr/bin/time -o "$work/time.txt" -f "%M %e" \
      "$bin" run --model "scripted:$agent" --epochs 20 --concurrency "$concurrency" \
      --progress quiet --db "$work/r$concurrency.db" --work-dir "$work/homes" >/dev/null
    busy_after=$(busy)
    read -r rss wall <"$work/time.txt"
    awk -v k="$concurrency" -v rss="$rss" -v peak="$(cat "$peak_file")" -v w="$wall" \
      -v b0="$busy_before" -v b1="$busy_after" \
      'BEGIN { printf "concurrency=%d trials=200 wall=%.1fs rate=%.1f trials/s harness_peak_rss=%.0fMiB sandboxes_peak=%.0fMiB cpu_per_trial=%.3fs cores_busy=%.2f\n",
               k, w, 200 / w, rss / 1024, peak / 1048576, (b1 - b0) / 200, (b1 - b0) / w }'
  done
}

case $what in
  rates) rates ;;
  merge) merge ;;
  resources) resources ;;
  all) rates; merge; resources ;;
  *) echo "usage: $0 [rates|merge|resources|all] [agent]" >&2; exit 2 ;;
esac
