//! Benchmark and smoke binary: prefill tok/s on a prompt, greedy decode tok/s, and batched decode of N sequences.
//!
//! Usage: llm_bench <model.gguf> [--threads N] [--prompt-file F | --prompt TEXT] [--decode N] [--batch N] [--show]
//! Prints one JSON line of measurements so bench/llm/bench.sh can collect it.

use std::path::PathBuf;
use std::time::Instant;

use offswitch_llm::{LoadOptions, Model, Sampler, SamplingParams};

/// CPU seconds (user + system) this process has used, from /proc/self/stat, so runs on a busy machine can be
/// compared by tokens per CPU second as well as by wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: llm_bench <model.gguf> [options]")?,
    );
    let mut threads = 2;
    let mut prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
            .to_string();
    let mut decode = 200;
    let mut batch = 0;
    let mut show = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => threads = args.next().ok_or("--threads needs a value")?.parse()?,
            "--prompt" => prompt = args.next().ok_or("--prompt needs a value")?,
            "--prompt-file" => {
                prompt = std::fs::read_to_string(args.next().ok_or("--prompt-file needs a path")?)?
            }
            "--decode" => decode = args.next().ok_or("--decode needs a value")?.parse()?,
            "--batch" => batch = args.next().ok_or("--batch needs a value")?.parse()?,
            "--show" => show = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let started = Instant::now();
    let model = Model::load(&path, &LoadOptions { threads })?;
    let load_s = started.elapsed().as_secs_f64();
    let tokens = model.tokenizer().encode(&prompt, true);
    let capacity = tokens.len() + decode + 8;

    let mut sequence = model.new_sequence(capacity);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut logits = model.forward(&mut [(&mut sequence, &tokens)])?.remove(0);
    let prefill_s = started.elapsed().as_secs_f64();
    let prefill_cpu = cpu_seconds() - cpu0;
    let cpu0 = cpu_seconds();
    let mut sampler = Sampler::new(SamplingParams::default());
    let mut generated = Vec::new();
    let started = Instant::now();
    for _ in 0..decode {
        // A fixed number of tokens regardless of end-of-turn, so every run decodes the same amount.
        let next = sampler.sample(&logits, None);
        generated.push(next);
        logits = model.forward(&mut [(&mut sequence, &[next])])?.remove(0);
    }
    let decode_s = started.elapsed().as_secs_f64();
    let decode_cpu = cpu_seconds() - cpu0;
    if show {
        eprintln!("{}", model.tokenizer().decode(&generated));
    }

    let mut batch_tok_s = None;
    if batch > 0 {
        let mut sequences: Vec<_> = (0..batch).map(|_| model.new_sequence(capacity)).collect();
        let mut samplers: Vec<_> = (0..batch)
            .map(|i| {
                Sampler::new(SamplingParams {
                    temperature: 0.8,
                    top_p: 0.95,
                    seed: i as u64,
                })
            })
            .collect();
        let mut entries: Vec<_> = sequences
            .iter_mut()
            .map(|s| (s, tokens.as_slice()))
            .collect();
        let mut all = model.forward(&mut entries)?;
        let started = Instant::now();
        for _ in 0..decode {
            let next: Vec<[u32; 1]> = all
                .iter()
                .zip(&mut samplers)
                .map(|(l, s)| [s.sample(l, None)])
                .collect();
            let mut entries: Vec<_> = sequences
                .iter_mut()
                .zip(&next)
                .map(|(s, t)| (s, t.as_slice()))
                .collect();
            all = model.forward(&mut entries)?;
        }
        batch_tok_s = Some((batch * decode) as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": "offswitch-llm",
            "threads": threads,
            "load_s": load_s,
            "prompt_tokens": tokens.len(),
            "prefill_tok_s": tokens.len() as f64 / prefill_s,
            "prefill_cpu_s": prefill_cpu,
            "decode_cpu_s": decode_cpu,
            "decode_tokens": decode,
            "decode_tok_s": decode as f64 / decode_s,
            "batch": batch,
            "batch_aggregate_tok_s": batch_tok_s,
            "weight_mb": model.weight_bytes() as f64 / 1e6,
        })
    );
    Ok(())
}
