#!/usr/bin/env bash
# The run viewer on a 100,000-trial run: `offswitch view` beside Inspect's `inspect view` on the
# same run exported as an Inspect log, measured the same way in one run.
#   time to first render  headless Chromium (bench/viewer/measure.cjs, puppeteer-core): from
#                         navigation start until the page shows the run (offswitch: `table.rates`
#                         on /runs/<run>; Inspect: the first row of the log's sample list,
#                         `[role="gridcell"][data-col-id="sampleId"]`).
#                         Three loads each: a new browser on the freshly started server, a new
#                         browser on the warm server, and that browser again (its caches warm).
#   server peak memory    the server process's VmHWM (/proc/<pid>/status; its children's added),
#                         and its process tree's RSS sampled every 100 ms during each load.
#   the tab               Chromium's JS heap after the render (page.metrics) and the largest
#                         browser process's RSS sampled every 100 ms (the tab's renderer).
# The 100,000 trials are copies of one real trial per cell (a template run of scripted:overwrite,
# then crates/offswitch-merge/examples/make_shards.rs, 4 shards, `offswitch merge`), run id
# bench-merge; the Inspect log is `offswitch export --format inspect` of the same run.
#
#   bench/viewer/run.sh [DB]     DB: an existing run database holding the run (default: make one)
#
# Environment: SKIP_BUILD=1 (use the binaries in target/release as they are), OFFSWITCH_BIN
# (another offswitch binary, for `view` and `export`), TRIALS (100000),
# RUN_ID (bench-merge), INSPECT_LOGS=DIR (an existing export of the run: skip the export),
# TIMEOUT_MS (per load, 300000), SETTLE_MS (30000: load 2's tab stays open this long before
# load 3), KEEP=1 (keep the work directory).
# Writes bench/RESULTS-viewer.md. Installs chromium (apt) and puppeteer-core (npm, into
# ~/.cache/offswitch/browser) if missing. Needs root for the template run (real sandboxes).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p offswitch-cli >/dev/null 2>&1
    cargo build --release -p offswitch-merge --example make_shards >/dev/null 2>&1
fi
bin=${OFFSWITCH_BIN:-$repo/target/release/offswitch}
make_shards=$repo/target/release/examples/make_shards
db=${1:-}
run_id=${RUN_ID:-bench-merge}
trials=${TRIALS:-100000}
timeout_ms=${TIMEOUT_MS:-300000}
settle_ms=${SETTLE_MS:-30000} # load 2's tab stays open this long before load 3 (cache writes)
puppeteer_version=24.43.1 # the newest puppeteer-core for Node 20 (25.x needs Node >= 22.12)

# The browser and its DevTools client.
if [ ! -x /usr/bin/chromium ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
browser_dir=${PUPPETEER_DIR:-$HOME/.cache/offswitch/browser}
if [ "$(node -p "try { require('$browser_dir/node_modules/puppeteer-core/package.json').version } catch (e) { '' }")" != "$puppeteer_version" ]; then
    npm install --prefix "$browser_dir" --no-audit --no-fund "puppeteer-core@$puppeteer_version" >/dev/null
fi
export PUPPETEER_CORE=$browser_dir/node_modules/puppeteer-core
export CHROMIUM=/usr/bin/chromium

work=$(mktemp -d "${TMPDIR:-/tmp}/offswitch-viewer.XXXXXX")
servers=()
cleanup() {
    for pid in "${servers[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then
        echo "work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

raw=$work/raw.txt      # every line of the raw output
results=$work/results.jsonl
: >"$raw"
: >"$results"
say() { echo "$*" | tee -a "$raw"; }

say "host: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
say "chromium: $($CHROMIUM --version 2>/dev/null | head -1); puppeteer-core $puppeteer_version; node $(node --version)"

# The run.
if [ -z "$db" ]; then
    "$bin" run --model scripted:overwrite --progress quiet --db "$work/template.db" \
        --work-dir "$work/homes" >/dev/null
    "$make_shards" "$work/template.db" "$work/shards" "$trials" 4 2>&1 | tee -a "$raw"
    "$bin" merge "$work/run.db" "$work"/shards/shard-*.db >/dev/null
    rm -rf "$work/shards" "$work/homes"
    db=$work/run.db
fi
count=$trials
if [ -n "${1:-}" ]; then
    count=$(sqlite3 "$db" 'SELECT count(*) FROM trials' 2>/dev/null || echo '?')
fi
say "database: $db ($(du -h "$db" | cut -f1)), run $run_id, $count trials"

# The Inspect log.
if [ -n "${INSPECT_LOGS:-}" ]; then
    logs=$INSPECT_LOGS
    say "inspect log: given, $logs"
else
    logs=$work/inspect
    /usr/bin/time -f '%e %M' -o "$work/export.time" \
        "$bin" export "$run_id" --db "$db" --format inspect --out "$logs" >/dev/null
    read -r export_s export_kb <"$work/export.time"
    say "export --format inspect: wall=${export_s}s peak_rss=$((export_kb / 1024))MiB"
fi
log_file=$(ls -S "$logs"/*.eval 2>/dev/null | head -1 || true)
if [ -n "$log_file" ]; then
    say "inspect log: $(basename "$log_file") ($(du -h "$log_file" | cut -f1); $(ls "$logs"/*.eval | wc -l) file(s))"
else
    say "inspect log: no .eval file in $logs"
fi

# A free TCP port on 127.0.0.1 from $1 up.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    echo "$port"
}

# The process tree under $1, one pid a line.
tree() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            keep[root] = 1; print root
            do { added = 0
                 for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; print p; added = 1 }
            } while (added)
        }'
}

# Every 100 ms until $1 exits or the file $2 appears, one line into $3: for each of the process
# trees under $4 and $5, "<sum of VmRSS> <largest VmRSS>" (KiB). One `ps` a tick.
sample_trees() {
    local alive=$1 stop=$2 out=$3 a=$4 b=$5
    : >"$out"
    while kill -0 "$alive" 2>/dev/null && [ ! -e "$stop" ]; do
        ps -e -o pid=,ppid=,rss= | awk -v a="$a" -v b="$b" '
            { parent[$1] = $2; rss[$1] = $3 }
            function walk(root,   p, added, sum, max) {
                delete keep; keep[root] = 1
                do { added = 0
                     for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 }
                } while (added)
                sum = 0; max = 0
                for (p in keep) { sum += rss[p]; if (rss[p] > max) max = rss[p] }
                return sum " " max
            }
            END { print walk(a) " " walk(b) }' >>"$out"
        sleep 0.1
    done
}

# The sum of VmHWM (KiB) over the process tree under $1.
tree_hwm() {
    local pid sum=0 hwm
    for pid in $(tree "$1"); do
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        sum=$((sum + ${hwm:-0}))
    done
    echo "$sum"
}

# measure VIEWER SERVER_PID URL SELECTOR STARTUP_MS: three loads, one JSON line each into $results.
#   load 1  a new browser, the server freshly started
#   load 2  a new browser (cold browser caches), the server warm
#   load 3  a new tab in load 2's browser, SETTLE_MS after load 2's render (load 2's tab
#           open until then, so that what the app caches client-side is written): its HTTP cache,
#           IndexedDB and localStorage warm
# The memory samples cover each browser: loads 2 and 3 share theirs.
measure() {
    local viewer=$1 server=$2 url=$3 selector=$4 startup_ms=$5 run rc node_pid sampler idle_kb
    idle_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server/status")
    for run in 1 2; do
        local stop=$work/stop-$viewer-$run samples=$work/rss-$viewer-$run.txt
        local json=$work/measure-$viewer-$run.json err=$work/measure-$viewer-$run.err
        LOADS=$run SETTLE_MS=$settle_ms node "$repo/bench/viewer/measure.cjs" "$url" "$selector" "$timeout_ms" \
            "$work/$viewer-$run.png" >"$json" 2>"$err" &
        node_pid=$!
        sample_trees "$node_pid" "$stop" "$samples" "$server" "$node_pid" &
        sampler=$!
        rc=0
        wait "$node_pid" || rc=$?
        touch "$stop"
        wait "$sampler" 2>/dev/null || true
        local server_alive=true hwm=0 tree_peak tab_peak
        kill -0 "$server" 2>/dev/null || server_alive=false
        $server_alive && hwm=$(tree_hwm "$server")
        tree_peak=$(awk '$1 > m { m = $1 } END { print m + 0 }' "$samples")
        tab_peak=$(awk '$4 > m { m = $4 } END { print m + 0 }' "$samples")
        node -e '
            const fs = require("fs");
            const [json, err, viewer, run, hwm, treePeak, tabPeak, idle, startup, alive, rc] = process.argv.slice(1);
            let lines = fs.readFileSync(json, "utf8").split("\n").filter(Boolean);
            if (lines.length === 0) {
              lines = [JSON.stringify({ ok: false, error: fs.readFileSync(err, "utf8").slice(0, 400) })];
            }
            const kinds = ["new browser, server just started", "new browser, server warm", "same browser again (browser caches warm)"];
            lines.forEach((line, i) => {
              const r = JSON.parse(line);
              delete r.browser_load;
              if (r.url) r.url = r.url.replace(/([?&]token=)[^&#]*/, "$1...");
              const load = run === "1" ? 1 : 2 + i;
              console.log(JSON.stringify(Object.assign({ viewer, load, kind: kinds[load - 1] }, r, {
                exit_code: +rc, server_alive: alive === "true", server_startup_ms: +startup,
                server_idle_rss_kb: +idle, server_hwm_kb: +hwm, server_tree_peak_rss_kb: +treePeak,
                tab_peak_rss_kb: +tabPeak })));
            });' \
            "$json" "$err" "$viewer" "$run" "$hwm" "${tree_peak:-0}" "${tab_peak:-0}" "$idle_kb" "$startup_ms" \
            "$server_alive" "$rc" | while IFS= read -r line; do
            echo "$line" >>"$results"
            say "$line"
        done
        if ! $server_alive; then
            say "$viewer: the server exited during the measurement (run $run)"
            break
        fi
    done
}

now_ms() { date +%s%3N; }

# offswitch view.
if "$bin" view --help >/dev/null 2>&1; then
    port=$(free_port 17870)
    started=$(now_ms)
    "$bin" view --db "$db" --port "$port" >"$work/offswitch-view.out" 2>"$work/offswitch-view.err" &
    view_pid=$!
    servers+=("$view_pid")
    url=""
    for _ in $(seq 1 1200); do # up to 120 s for the first line
        url=$(head -1 "$work/offswitch-view.out" 2>/dev/null | grep -o 'http://[^[:space:]]*' || true)
        [ -n "$url" ] && break
        kill -0 "$view_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$url" ]; then
        say "offswitch view: printed no URL; stdout: $(head -c 300 "$work/offswitch-view.out"); stderr: $(head -c 300 "$work/offswitch-view.err")"
    else
        startup=$(($(now_ms) - started))
        origin=$(echo "$url" | sed -E 's#^(https?://[^/?]+).*#\1#')
        token=$(echo "$url" | sed -nE 's#.*[?&]token=([^&]+).*#\1#p')
        say "offswitch view up in ${startup} ms: $(head -1 "$work/offswitch-view.out" | sed -E 's#token=[^&[:space:]]+#token=...#')"
        measure offswitch "$view_pid" "$origin/runs/$run_id?token=$token" 'table.rates' "$startup"
    fi
    kill "$view_pid" 2>/dev/null || true
    wait "$view_pid" 2>/dev/null || true
    servers=()
else
    say "offswitch view: not available in $bin (\`offswitch view --help\` failed); skipped"
fi

# inspect view.
inspect=$(command -v inspect || true)
[ -z "$inspect" ] && [ -x /usr/local/bin/inspect ] && inspect=/usr/local/bin/inspect
if [ -z "$log_file" ]; then
    say "inspect view: no log to show; skipped"
elif [ -n "$inspect" ]; then
    say "inspect: inspect-ai $(PATH=/usr/local/bin:/usr/bin:/bin:$PATH "$inspect" --version 2>/dev/null | tail -1)"
    port=$(free_port 17890)
    started=$(now_ms)
    PATH=/usr/local/bin:/usr/bin:/bin:$PATH "$inspect" view --log-dir "$logs" --port "$port" --host 127.0.0.1 \
        >"$work/inspect-view.out" 2>&1 &
    inspect_pid=$!
    servers+=("$inspect_pid")
    up=false
    for _ in $(seq 1 1200); do
        if curl -sf -o /dev/null "http://127.0.0.1:$port/"; then
            up=true
            break
        fi
        kill -0 "$inspect_pid" 2>/dev/null || break
        sleep 0.1
    done
    if $up; then
        startup=$(($(now_ms) - started))
        say "inspect view: http://127.0.0.1:$port/ (up in ${startup} ms)"
        measure inspect "$inspect_pid" "http://127.0.0.1:$port/#/tasks/$(basename "$log_file")" \
            '[role="gridcell"][data-col-id="sampleId"]' "$startup"
    else
        say "inspect view: did not start: $(head -c 500 "$work/inspect-view.out")"
    fi
    kill "$inspect_pid" 2>/dev/null || true
    wait "$inspect_pid" 2>/dev/null || true
    servers=()
else
    say "inspect view: inspect-ai not installed; skipped"
fi

table=$(node -e '
    const rows = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map(JSON.parse);
    const mib = (kb) => kb ? (kb / 1024).toFixed(0) : "-";
    const ms = (v) => v === null || v === undefined ? "-" : String(v);
    console.log("| viewer | load | time to first render ms | DOMContentLoaded ms | server peak RSS MiB (VmHWM) | server RSS before MiB | tab JS heap MiB | tab peak RSS MiB | ok |");
    console.log("|---|---|---|---|---|---|---|---|---|");
    for (const r of rows) {
      const heap = r.js_heap_used_bytes ? (r.js_heap_used_bytes / 1048576).toFixed(0) : "-";
      const ok = r.ok ? "yes" : "no: " + (r.error || "") + (r.page_text ? " (page: " + r.page_text.slice(0, 120) + ")" : "");
      console.log(`| ${r.viewer} | ${r.load} | ${r.ok ? ms(r.first_render_ms) : "> " + ms(r.elapsed_ms || r.wall_ms)} | ${ms(r.dom_content_loaded_ms)} | ${mib(r.server_hwm_kb)} | ${mib(r.server_idle_rss_kb)} | ${heap} | ${mib(r.tab_peak_rss_kb)} | ${ok} |`);
    }' "$results")
say "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$table"

out=bench/RESULTS-viewer.md
{
    echo "# The run viewer on a $count-trial run: \`offswitch view\` and \`inspect view\`"
    echo
    echo "What: time to first render of one run's page in headless Chromium, from navigation start until"
    echo "the run is on screen (offswitch: \`table.rates\` on /runs/$run_id; Inspect's viewer: the first"
    echo "row of the log's sample list, \`[role=\"gridcell\"][data-col-id=\"sampleId\"]\`). Three loads each:"
    echo "1, a new browser, the server just started; 2, a new browser, the server warm; 3, a new tab in"
    echo "load 2's browser $((settle_ms / 1000)) s after load 2's render (its HTTP cache and IndexedDB warm)."
    echo "Server peak RSS: the server's VmHWM from /proc (children added). Tab: Chromium's JS heap after"
    echo "the render, and the largest browser process's peak RSS sampled every 100 ms (loads 2 and 3"
    echo "share a browser). The same run for both: $count trials (copies of one real trial per cell, made"
    echo "by make_shards), exported to Inspect with \`offswitch export --format inspect\`. Command:"
    echo "\`bench/viewer/run.sh\` (bench/viewer/measure.cjs, puppeteer-core $puppeteer_version, Debian's chromium)."
    echo
    echo "$table"
    echo
    echo "Raw output:"
    echo
    echo '```'
    cat "$raw"
    echo '```'
} >"$out"
echo "wrote $out"
