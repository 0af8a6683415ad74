//! Audit log throughput: records appended per second with a checkpoint every 1,000 records
//! (bodies of about 300 bytes shaped like the guard's kernel events), then `verify` and one
//! `prove` on a 1,000,000-record log. `cargo bench -p offswitch-audit`; the sizes can be set
//! with `AUDIT_BENCH_APPEND` and `AUDIT_BENCH_VERIFY` (records). Results go in BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use offswitch_audit::{AuditKey, AuditWriter, Options, VerifyOptions};

fn main() {
    let append_records = records_from_env("AUDIT_BENCH_APPEND", 200_000);
    let verify_records = records_from_env("AUDIT_BENCH_VERIFY", 1_000_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = AuditKey::generate().expect("a key");
    let bodies: Vec<serde_json::Value> = (0..1000).map(kernel_event).collect();
    let body_bytes = serde_json::to_vec(&bodies[0]).unwrap().len();
    println!(
        "audit log benchmark: bodies of {body_bytes} bytes as JSON, a checkpoint every 1,000 records, files in {}",
        dir.path().display()
    );

    // Three rounds of appends, each into a fresh log; the median is the figure.
    let mut rates = Vec::new();
    for round in 0..3 {
        let path = dir.path().join(format!("append-{round}.jsonl"));
        let (elapsed, bytes) = write(&path, &key, &bodies, append_records);
        let rate = append_records as f64 / elapsed.as_secs_f64();
        println!(
            "append round {round}: {append_records} records in {:.3} s = {rate:.0} records/s, {:.1} MB/s of log",
            elapsed.as_secs_f64(),
            bytes as f64 / elapsed.as_secs_f64() / 1e6
        );
        rates.push(rate);
        std::fs::remove_file(&path).unwrap();
    }
    rates.sort_by(f64::total_cmp);
    println!("append median: {:.0} records/s", rates[1]);

    let path = dir.path().join("verify.jsonl");
    let (elapsed, bytes) = write(&path, &key, &bodies, verify_records);
    println!(
        "wrote {verify_records} records ({:.0} MB) in {:.1} s",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64()
    );
    let options = VerifyOptions {
        trusted_public_key: Some(key.public_key()),
        witness: None,
    };
    for round in 0..2 {
        let started = Instant::now();
        let report = offswitch_audit::verify(&path, &options).expect("verify runs");
        let elapsed = started.elapsed();
        assert!(report.ok(), "{}", report.render());
        assert_eq!(report.records, verify_records);
        println!(
            "verify round {round}: {verify_records} records, {} checkpoints in {:.2} s = {:.0} records/s, {:.0} MB/s",
            report.checkpoints,
            elapsed.as_secs_f64(),
            verify_records as f64 / elapsed.as_secs_f64(),
            bytes as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
    println!("peak RSS so far: {} (appends, verify)", peak_rss());
    let started = Instant::now();
    let proof = offswitch_audit::prove(&path, verify_records / 2).expect("a proof");
    let proving = started.elapsed();
    offswitch_audit::verify_proof(&proof, &key.public_key()).expect("the proof holds");
    println!(
        "prove record {} of {verify_records}: {:.2} s (audit path of {} hashes); peak RSS {}",
        verify_records / 2,
        proving.as_secs_f64(),
        proof.audit_path.len(),
        peak_rss()
    );
}

/// Append `count` records to a new log at `path`, finish it; the time taken and the file size.
fn write(path: &Path, key: &AuditKey, bodies: &[serde_json::Value], count: u64) -> (Duration, u64) {
    let started = Instant::now();
    let mut writer = AuditWriter::create(
        path,
        key,
        Options {
            checkpoint_every: 1000,
            metadata: serde_json::json!({"session": "bench"}),
            ..Options::default()
        },
    )
    .expect("a new log");
    for index in 0..count {
        writer
            .append("kernel_event", &bodies[(index % 1000) as usize])
            .expect("append");
    }
    writer.finish().expect("finish");
    let elapsed = started.elapsed();
    (elapsed, std::fs::metadata(path).unwrap().len())
}

/// A kernel event as the guard records it, about 300 bytes as JSON.
fn kernel_event(index: u64) -> serde_json::Value {
    serde_json::json!({
        "source": "kernel",
        "time_us": 1_510_000 + index * 137,
        "pid": 4000 + index % 97,
        "ppid": 3998,
        "exe": "/usr/bin/python3",
        "harness": false,
        "event": "exec",
        "path": format!("/home/agent/tools/step_{index:04}.sh"),
        "argv": ["bash", "-c", format!("cp /home/agent/model.bin /tmp/.cache/{index:04} && sync")],
        "argv_truncated": false,
        "cgroup": "/offswitch/session-7f3a/agent",
        "rule": null
    })
}

fn records_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// VmHWM from /proc/self/status.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .map(|line| line["VmHWM:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
