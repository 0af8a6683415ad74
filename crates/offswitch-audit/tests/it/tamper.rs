//! Thousands of seeded random mutations of a valid, witnessed log: every one must be reported,
//! and the untouched log must not be. Each mutation is also verified without the witness: all
//! but a cut exactly after a checkpoint must be caught then too (that one is undetectable
//! without a witness by design, and the crate's docs say so).

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::Signer as _;
use offswitch_audit::{AuditWriter, Checkpoint, Options, VerifyOptions, VerifyReport};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::{chain, genesis, kernel_event, key, reseal, temp, write_log};

const RECORDS: u64 = 60;
const EVERY: u64 = 9;
const MUTATIONS: usize = 3000;

/// The log as lines with their newlines, and what each line is.
struct Log {
    lines: Vec<Vec<u8>>,
}

impl Log {
    fn bytes(&self) -> Vec<u8> {
        self.lines.concat()
    }

    fn indices(&self, prefix: &[u8]) -> Vec<usize> {
        (0..self.lines.len())
            .filter(|&i| self.lines[i].starts_with(prefix))
            .collect()
    }
}

const RECORD: &[u8] = b"{\"type\":\"record\"";
const CHECKPOINT: &[u8] = b"{\"type\":\"checkpoint\"";

fn verify(path: &Path, witness: Option<&Path>) -> VerifyReport {
    offswitch_audit::verify(
        path,
        &VerifyOptions {
            trusted_public_key: Some(key().public_key()),
            witness: witness.map(Path::to_owned),
        },
    )
    .unwrap_or_else(|error| panic!("verify refused the file: {error}"))
}

#[test]
fn every_random_mutation_is_reported() {
    let (_dir, dir) = temp();
    let original_path = dir.join("original.jsonl");
    let witness = dir.join("witness.jsonl");
    write_log(&original_path, RECORDS, EVERY, Some(&witness));
    let original = std::fs::read(&original_path).unwrap();
    let log = Log {
        lines: original
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect(),
    };
    let report = verify(&original_path, Some(&witness));
    assert!(report.ok(), "{}", report.render());
    let records = log.indices(RECORD);
    let checkpoints = log.indices(CHECKPOINT);
    assert_eq!(records.len() as u64, RECORDS);
    assert_eq!(checkpoints.len() as u64, 1 + RECORDS / EVERY + 1);

    let path = dir.join("mutated.jsonl");
    let mut rng = StdRng::seed_from_u64(0x00ff_51c4);
    let mut tried: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut caught_only_by_witness: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..MUTATIONS {
        let (class, mutated) = mutate(&log, &records, &checkpoints, &mut rng, &dir);
        assert_ne!(mutated, original, "{class} left the log as it was");
        std::fs::write(&path, &mutated).unwrap();
        *tried.entry(class).or_default() += 1;
        let with_witness = verify(&path, Some(&witness));
        assert!(
            !with_witness.ok(),
            "{class} was not detected:\n{}",
            String::from_utf8_lossy(&mutated)
        );
        let without_witness = verify(&path, None);
        if without_witness.ok() {
            assert!(
                class.starts_with("truncate"),
                "{class} was detected only with the witness"
            );
            // A cut that leaves a checkpoint last is a valid log a crash could have left.
            assert!(mutated.ends_with(b"\n"));
            let last = mutated[..mutated.len() - 1]
                .rsplit(|&b| b == b'\n')
                .next()
                .unwrap();
            assert!(last.starts_with(CHECKPOINT), "{class}");
            *caught_only_by_witness.entry(class).or_default() += 1;
        }
    }
    eprintln!("mutation classes tried ({MUTATIONS} mutations, all detected):");
    for (class, count) in &tried {
        let only = caught_only_by_witness.get(class).copied().unwrap_or(0);
        eprintln!(
            "  {count:5}  {class}{}",
            if only > 0 {
                format!(" ({only} caught only by the witness)")
            } else {
                String::new()
            }
        );
    }
    // Every class was drawn, often enough to mean something.
    assert_eq!(tried.len(), 21, "{tried:?}");
    assert!(tried.values().all(|&count| count >= 10), "{tried:?}");
}

/// One random mutation: its class and the changed bytes.
fn mutate(
    log: &Log,
    records: &[usize],
    checkpoints: &[usize],
    rng: &mut StdRng,
    dir: &Path,
) -> (&'static str, Vec<u8>) {
    let mut lines = log.lines.clone();
    let pick = |rng: &mut StdRng, from: &[usize]| from[rng.random_range(0..from.len())];
    let choice = rng.random_range(0..1000);
    let class = match choice {
        // Byte edits: 45%.
        0..300 => {
            let field = ["seq", "time", "kind", "body", "chain"][rng.random_range(0..5)];
            let line = pick(rng, records);
            edit_field(&mut lines[line], field, rng);
            match field {
                "seq" => "edit a byte of a record's seq",
                "time" => "edit a byte of a record's time",
                "kind" => "edit a byte of a record's kind",
                "body" => "edit a byte of a record's body",
                _ => "edit a byte of a record's chain link",
            }
        }
        300..400 => {
            let line = pick(rng, checkpoints);
            edit_byte(&mut lines[line], rng);
            "edit a byte of a checkpoint"
        }
        400..450 => {
            edit_byte(&mut lines[0], rng);
            "edit a byte of the header"
        }
        // Removals, moves and copies.
        450..510 => {
            lines.remove(pick(rng, records));
            "drop a record line"
        }
        510..560 => {
            lines.remove(pick(rng, checkpoints));
            "drop a checkpoint line"
        }
        560..640 => {
            let a = rng.random_range(0..lines.len());
            let mut b = rng.random_range(0..lines.len());
            while b == a {
                b = rng.random_range(0..lines.len());
            }
            lines.swap(a, b);
            "swap two lines"
        }
        640..680 => {
            let a = pick(rng, records);
            lines.swap(a, a + 1);
            "swap a line with the next"
        }
        680..740 => {
            let from = rng.random_range(0..lines.len());
            let to = rng.random_range(0..=lines.len());
            let copy = lines[from].clone();
            lines.insert(to, copy);
            "duplicate a line"
        }
        // Truncations.
        740..800 => {
            let bytes = log.bytes();
            return (
                "truncate at a random byte",
                bytes[..rng.random_range(0..bytes.len())].to_vec(),
            );
        }
        800..840 => {
            lines.truncate(rng.random_range(0..lines.len()));
            "truncate at a line boundary"
        }
        840..880 => {
            // Exactly after a checkpoint other than the last: only the witness can tell.
            let at = pick(rng, &checkpoints[..checkpoints.len() - 1]);
            lines.truncate(at + 1);
            "truncate after a checkpoint"
        }
        // Forgeries by someone without the key.
        880..910 => {
            lines.push(forged_record(log));
            "append a forged record"
        }
        910..940 => {
            let forged = forged_checkpoint(log, rng.random_range(1..=3));
            lines.push(forged);
            "append a checkpoint signed with another key"
        }
        940..960 => {
            lines.push(forged_record(log));
            let mut extended: Vec<String> = lines.iter().map(|l| text(l)).collect();
            extended.push(sealing_checkpoint(&extended));
            return ("append a record sealed with another key", joined(&extended));
        }
        960..975 => {
            let header = text(&lines[0]);
            let changed = header.replace(
                "\"session\":\"test\"",
                &format!("\"session\":\"s{}\"", rng.random_range(0..1000)),
            );
            lines[0] = format!("{changed}\n").into_bytes();
            "change the header's metadata"
        }
        975..990 => {
            // Change a record and re-seal everything with the attacker's key, naming it in
            // the header (the attack of CVE-2023-31439 and worse).
            let mut all: Vec<String> = lines.iter().map(|l| text(l)).collect();
            let line = pick(rng, records);
            all[line] = all[line].replacen("/tmp/.cache/", "/tmp/.gone/", 1);
            all[0] = all[0].replace(
                &hex::encode(key().public_key().as_bytes()),
                &hex::encode(attacker().verifying_key().as_bytes()),
            );
            return (
                "rewrite a record and re-sign the whole log with another key",
                joined(&reseal(&all, &attacker())),
            );
        }
        _ => {
            // A new log, consistent in itself, with the same records, made with a fresh key.
            let forged = dir.join("forgery.jsonl");
            let _ = std::fs::remove_file(&forged);
            let mut writer = AuditWriter::create(
                &forged,
                &offswitch_audit::AuditKey::generate().unwrap(),
                Options {
                    checkpoint_every: EVERY,
                    metadata: serde_json::json!({"session": "test"}),
                    ..Options::default()
                },
            )
            .unwrap();
            for index in 0..RECORDS {
                let kind = if index % 5 == 4 {
                    "rule_hit"
                } else {
                    "kernel_event"
                };
                writer.append(kind, &kernel_event(index)).unwrap();
            }
            writer.finish().unwrap();
            return (
                "replace the log by a forgery made with a fresh key",
                std::fs::read(&forged).unwrap(),
            );
        }
    };
    (class, lines.concat())
}

fn attacker() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9; 32])
}

fn text(line: &[u8]) -> String {
    String::from_utf8(line.strip_suffix(b"\n").unwrap_or(line).to_vec()).unwrap()
}

fn joined(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

/// Change one byte of a line (never its newline) to another value.
fn edit_byte(line: &mut [u8], rng: &mut StdRng) {
    let at = rng.random_range(0..line.len() - 1);
    line[at] ^= rng.random_range(1..=255u8);
}

/// Change one byte within a field's value of a record line.
fn edit_field(line: &mut [u8], field: &str, rng: &mut StdRng) {
    let key = format!("\"{field}\":");
    let start = memfind(line, key.as_bytes()).unwrap() + key.len();
    let end = match field {
        "body" => memfind(line, b",\"chain\":").unwrap(),
        "chain" => line.len() - 2,
        _ => start + memfind(&line[start..], b",\"").unwrap(),
    };
    let at = rng.random_range(start..end);
    line[at] ^= rng.random_range(1..=255u8);
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A record continuing the log with a correct seq and chain link: the format is public.
fn forged_record(log: &Log) -> Vec<u8> {
    let lines: Vec<String> = log.lines.iter().map(|l| text(l)).collect();
    let last_record = lines
        .iter()
        .rev()
        .find(|l| l.as_bytes().starts_with(RECORD))
        .unwrap();
    let last_link = last_record.rsplit("\"chain\":\"").next().unwrap();
    let last_link: [u8; 32] = hex::decode(&last_link[..64]).unwrap().try_into().unwrap();
    let entry = format!(
        "{{\"type\":\"record\",\"seq\":{RECORDS},\"time\":\"2026-12-08T00:00:00.000000Z\",\"kind\":\"operator\",\"body\":{{\"command\":\"resume\"}}}}"
    );
    let leaf = offswitch_audit::merkle::leaf_hash(entry.as_bytes());
    format!(
        "{}\n",
        crate::record_line(&entry, &chain(&last_link, &leaf))
    )
    .into_bytes()
}

/// A checkpoint with the right number, size, root and chain head, signed with the attacker's
/// key; `closed` varies through `variant`.
fn forged_checkpoint(log: &Log, variant: u32) -> Vec<u8> {
    let lines: Vec<String> = log.lines.iter().map(|l| text(l)).collect();
    let resealed = reseal(&lines, &attacker());
    let mut checkpoint = Checkpoint::parse_line(resealed.last().unwrap().as_bytes()).unwrap();
    checkpoint.number += 1;
    checkpoint.closed = variant != 1;
    checkpoint.time = format!("2026-12-08T00:00:0{variant}.000000Z");
    checkpoint.signature = attacker().sign(&checkpoint.signed_message()).to_bytes();
    format!("{}\n", checkpoint.to_line()).into_bytes()
}

/// A checkpoint sealing everything in `lines` (the forged record included), attacker-signed.
fn sealing_checkpoint(lines: &[String]) -> String {
    let mut frontier = offswitch_audit::merkle::Frontier::new();
    let mut link = genesis(lines[0].as_bytes());
    let mut number = 0;
    let mut template = None;
    for line in &lines[1..] {
        if line.as_bytes().starts_with(RECORD) {
            let leaf = offswitch_audit::merkle::leaf_hash(crate::record_entry(line).as_bytes());
            link = chain(&link, &leaf);
            frontier.push(leaf);
        } else {
            let checkpoint = Checkpoint::parse_line(line.as_bytes()).unwrap();
            number = checkpoint.number + 1;
            template = Some(checkpoint);
        }
    }
    let mut checkpoint = template.unwrap();
    checkpoint.number = number;
    checkpoint.tree_size = frontier.size();
    checkpoint.root = frontier.root();
    checkpoint.chain_head = link;
    checkpoint.closed = true;
    checkpoint.signature = attacker().sign(&checkpoint.signed_message()).to_bytes();
    checkpoint.to_line()
}
