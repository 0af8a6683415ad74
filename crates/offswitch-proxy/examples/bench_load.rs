//! The load generator of the proxy benchmark (`bench/proxy/run.sh`): `C` clients, each sending
//! chat completions one after another over its own keep-alive connection for a fixed time,
//! reading every reply to its last byte. Prints one JSON line: requests, errors, throughput, and
//! the latency percentiles (request sent to last byte, and for streams to the first byte).
//! `paced` streams from the model `m-paced`, whose chunks the mock upstream sends 20 ms apart,
//! with the clients' starts spread over one reply's length, as independent agents' requests
//! arrive; `paced-lockstep` starts them all at once, and, each sending its next request when its
//! reply ends, they stay in step: every request arrives in one burst with the others.
//!
//! Usage: `bench_load URL TOKEN CONCURRENCY SECONDS stream|whole|paced|paced-lockstep`

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, token, concurrency, seconds, mode] = args.as_slice() else {
        eprintln!(
            "usage: bench_load URL TOKEN CONCURRENCY SECONDS stream|whole|paced|paced-lockstep"
        );
        std::process::exit(2);
    };
    let concurrency: usize = concurrency.parse().expect("a concurrency");
    let seconds: f64 = seconds.parse().expect("seconds");
    let paced = mode == "paced" || mode == "paced-lockstep";
    let stream = mode == "stream" || paced;
    let model = if paced { "m-paced" } else { "m" };
    // One paced reply's length (21 events, 20 ms apart), over which `paced` spreads the starts.
    let spread = if mode == "paced" {
        Duration::from_millis(420)
    } else {
        Duration::ZERO
    };
    let body = serde_json::json!({
        "model": model, "stream": stream, "max_tokens": 32,
        "messages": [{"role": "user", "content": "Say something short."}],
    })
    .to_string();
    let url = format!("{url}/chat/completions");
    // Warm every connection, then measure.
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in 0..concurrency {
        let (url, token, body) = (url.clone(), token.clone(), body.clone());
        let start = spread * client as u32 / concurrency as u32;
        workers.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client");
            // The time to the reply's first byte, when the reply is whole and successful.
            let (client, url, token, body) = (&client, &url, &token, &body);
            let send = move |sent: Instant| async move {
                let mut response = client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let ok = response.status().is_success();
                let mut first = None;
                let mut transit = Transit::default();
                while let Some(chunk) = response.chunk().await? {
                    if first.is_none() && !chunk.is_empty() {
                        first = Some(sent.elapsed());
                    }
                    if paced {
                        transit.arrived(&chunk);
                    }
                }
                transit.ended();
                Ok::<_, reqwest::Error>((first.filter(|_| ok), transit))
            };
            let _ = send(Instant::now()).await;
            let mut latencies = Vec::new();
            let mut firsts = Vec::new();
            let mut transits = Transit::default();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match send(sent).await {
                    Ok((Some(first), transit)) => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        firsts.push(first.as_secs_f64() * 1000.0);
                        transits.add(transit);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, firsts, transits, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut firsts = Vec::new();
    let mut transits = Transit::default();
    let mut errors = 0;
    for worker in workers {
        let (mut l, mut f, t, e) = worker.await.expect("a worker");
        latencies.append(&mut l);
        firsts.append(&mut f);
        transits.add(t);
        errors += e;
    }
    transits.events.sort_by(f64::total_cmp);
    transits.ends.sort_by(f64::total_cmp);
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    firsts.sort_by(f64::total_cmp);
    let quantile = |values: &[f64], q: f64| {
        if values.is_empty() {
            f64::NAN
        } else {
            values[((values.len() - 1) as f64 * q).round() as usize]
        }
    };
    let at = |q: f64| quantile(&latencies, q);
    println!(
        "{}",
        serde_json::json!({
            "requests": latencies.len(), "errors": errors, "seconds": elapsed,
            "throughput_rps": latencies.len() as f64 / elapsed,
            "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0),
            "first_p50_ms": quantile(&firsts, 0.5), "first_p99_ms": quantile(&firsts, 0.99),
            "event_transit_p50_ms": quantile(&transits.events, 0.5),
            "event_transit_p99_ms": quantile(&transits.events, 0.99),
            "end_transit_p50_ms": quantile(&transits.ends, 0.5),
            "end_transit_p99_ms": quantile(&transits.ends, 0.99),
        })
    );
}

/// Transit times of the events that say when the upstream sent them (`"sent_us"`, the paced
/// stream's): for each, from the upstream handing it over to this client reading it; and for each
/// reply, from its last stamped event's send to the end of the body (the client's last byte).
#[derive(Default)]
struct Transit {
    /// In milliseconds.
    events: Vec<f64>,
    ends: Vec<f64>,
    /// Bytes of an event not yet complete.
    partial: Vec<u8>,
    last_sent_us: Option<u128>,
}

impl Transit {
    fn arrived(&mut self, chunk: &[u8]) {
        let now = now_us();
        self.partial.extend_from_slice(chunk);
        const KEY: &[u8] = b"\"sent_us\":";
        let mut complete = 0;
        while let Some(end) = find(&self.partial[complete..], b"\n\n") {
            let event = &self.partial[complete..complete + end];
            if let Some(at) = find(event, KEY) {
                let digits: Vec<u8> = event[at + KEY.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .copied()
                    .collect();
                if let Some(sent) = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|d| d.parse::<u128>().ok())
                {
                    self.events.push(now.saturating_sub(sent) as f64 / 1000.0);
                    self.last_sent_us = Some(sent);
                }
            }
            complete += end + 2;
        }
        self.partial.drain(..complete);
    }

    fn ended(&mut self) {
        if let Some(sent) = self.last_sent_us.take() {
            self.ends
                .push(now_us().saturating_sub(sent) as f64 / 1000.0);
        }
    }

    fn add(&mut self, other: Transit) {
        self.events.extend(other.events);
        self.ends.extend(other.ends);
    }
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
