"""Summaries for bench/guard/run.sh: medians and p95 of wall times per mode, and the kill
latency from the audit logs (monitor_hit -> killed)."""
import datetime
import json
import statistics
import sys


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def times(path):
    modes = {}
    with open(path) as f:
        for line in f:
            mode, seconds, status = line.split()
            modes.setdefault(mode, []).append((float(seconds), int(status)))
    return modes


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def in_session(logs):
    """Seconds from session_start to command_end in each guard log: the workload's time under
    the guard without the session's fixed start (loading and verifying the BPF programs)."""
    values = []
    for path in logs:
        start = end = None
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record.get("type") != "record":
                    continue
                if record["kind"] == "session_start":
                    start = parse_time(record["time"])
                if record["kind"] == "command_end":
                    end = parse_time(record["time"])
        if start and end:
            values.append((end - start).total_seconds())
    return values


def kill_latency(logs):
    rows = []
    for path in logs:
        hit = killed = None
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record.get("type") != "record":
                    continue
                if record["kind"] == "monitor_hit" and hit is None:
                    hit = parse_time(record["time"])
                if record["kind"] == "killed":
                    killed = (parse_time(record["time"]), record["body"]["processes"], record["body"]["survivors"])
        if hit and killed:
            rows.append(((killed[0] - hit).total_seconds() * 1000, killed[1], killed[2]))
    return rows


if sys.argv[1] == "times":
    modes = times(sys.argv[2])
    bare = statistics.median([s for s, _ in modes["bare"]])
    print("| mode | runs | median s | p95 s | vs bare | failed runs |")
    print("|---|---|---|---|---|---|")
    for mode in ["bare", "guard", "srt"]:
        if mode not in modes:
            continue
        values = [s for s, _ in modes[mode]]
        failed = sum(1 for _, status in modes[mode] if status != 0)
        median = statistics.median(values)
        print(f"| {mode} | {len(values)} | {median:.2f} | {pct(values, 0.95):.2f} | {median / bare - 1:+.1%} | {failed} |")
    guard_logs = sys.argv[3:]
    if guard_logs:
        values = in_session(guard_logs)
        median = statistics.median(values)
        print(f"| guard, in session (start of the command to its end, from the audit log) | {len(values)} | "
              f"{median:.2f} | {pct(values, 0.95):.2f} | {median / bare - 1:+.1%} | |")
elif sys.argv[1] == "kill":
    rows = kill_latency(sys.argv[2:])
    latencies = [r[0] for r in rows]
    print("| runs | processes killed (mean) | median ms | p95 ms | max ms | survivors (total) |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(rows)} | {statistics.mean(r[1] for r in rows):.0f} | {statistics.median(latencies):.1f} | "
          f"{pct(latencies, 0.95):.1f} | {max(latencies):.1f} | {sum(r[2] for r in rows)} |")
