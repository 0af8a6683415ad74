//! The engine thread: one dedicated OS thread owns the model's compute and runs a
//! continuous-batching loop over every request in flight.
//!
//! Each step admits waiting requests, then feeds every active sequence its next tokens (a chunk
//! of prompt, the forced text of the grammar, or the token sampled last step) in one batched
//! `forward`, then samples each sequence with its own seeded sampler and grammar state. Idle
//! sequences are kept in a small LRU so that the next turn of a conversation only prefills what
//! is new after the longest common prefix.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

use offswitch_llm::{Model, Sampler, SamplingParams, Sequence};
use tokio::sync::{mpsc, oneshot};

use crate::grammar::{GrammarState, TokenTable, ToolGrammar};

/// One generation request, as the backend hands it to the engine thread.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub grammar: Option<Arc<ToolGrammar>>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Text as it is generated, for streaming; complete UTF-8 characters only.
    pub deltas: Option<mpsc::UnboundedSender<String>>,
    pub reply: oneshot::Sender<Result<Generation, String>>,
}

/// What a finished job produced.
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    pub tokens: Vec<u32>,
    pub stop: Stop,
    /// Prompt tokens whose KV came from a cached sequence rather than a prefill.
    pub reused_prompt_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The model ended its turn (or the grammar's call is complete).
    EndOfTurn,
    /// `max_tokens` or the sequence's capacity ran out first.
    Length,
}

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub max_batch: usize,
    pub sequence_tokens: usize,
    pub cached_sequences: usize,
    pub prefill_chunk: usize,
}

struct Active {
    job: Job,
    sequence: Sequence,
    /// Tokens to feed in the coming steps.
    pending: Vec<u32>,
    grammar_state: Option<GrammarState>,
    sampler: Sampler,
    generated: Vec<u32>,
    /// Bytes of generated text not yet sent as a delta (an incomplete UTF-8 character).
    undelivered: Vec<u8>,
    reused: usize,
}

struct Idle {
    sequence: Sequence,
    last_used: u64,
}

/// Run the loop until every sender of `jobs` is gone and no work is left.
pub(crate) fn run(
    model: Arc<Model>,
    table: Arc<TokenTable>,
    config: EngineConfig,
    jobs: Receiver<Job>,
) {
    let mut engine = Engine {
        model,
        table,
        config,
        active: Vec::new(),
        idle: Vec::new(),
        clock: 0,
        mask: Vec::new(),
    };
    let mut open = true;
    loop {
        if engine.active.is_empty() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(job) => engine.admit(job),
                Err(_) => return,
            }
        }
        while open && engine.active.len() < engine.config.max_batch {
            match jobs.try_recv() {
                Ok(job) => engine.admit(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        engine.step();
    }
}

struct Engine {
    model: Arc<Model>,
    table: Arc<TokenTable>,
    config: EngineConfig,
    active: Vec<Active>,
    idle: Vec<Idle>,
    clock: u64,
    mask: Vec<bool>,
}

impl Engine {
    fn admit(&mut self, job: Job) {
        if job.reply.is_closed() {
            return;
        }
        let (sequence, keep) = self.take_sequence(&job.prompt);
        let mut active = Active {
            pending: job.prompt[keep..].to_vec(),
            grammar_state: job.grammar.as_ref().map(|g| g.start()),
            sampler: Sampler::new(job.sampling),
            generated: Vec::new(),
            undelivered: Vec::new(),
            reused: keep,
            sequence,
            job,
        };
        feed_forced_text(&self.model, &self.table, &mut active);
        // The forced opening of a call can overflow a prompt that nearly fills the sequence;
        // fed anyway, it would make the whole batch's `forward` fail, not just this job.
        if let Some(stop) = check_limits(&active) {
            return self.finish(active, stop);
        }
        self.active.push(active);
    }

    /// The cached sequence sharing the longest prefix with `prompt`, truncated to it (leaving at
    /// least one prompt token to feed, since the logits come from feeding), or a fresh one.
    fn take_sequence(&mut self, prompt: &[u32]) -> (Sequence, usize) {
        let best = self
            .idle
            .iter()
            .enumerate()
            .map(|(i, idle)| (common_prefix(idle.sequence.tokens(), prompt), i))
            .max();
        if let Some((shared, index)) = best
            && shared > 0
        {
            let mut sequence = self.idle.swap_remove(index).sequence;
            let keep = shared.min(prompt.len().saturating_sub(1));
            sequence.truncate(keep);
            return (sequence, keep);
        }
        if self.idle.len() >= self.config.cached_sequences
            && let Some(oldest) = (0..self.idle.len()).min_by_key(|&i| self.idle[i].last_used)
        {
            let mut sequence = self.idle.swap_remove(oldest).sequence;
            sequence.truncate(0);
            return (sequence, 0);
        }
        (self.model.new_sequence(self.config.sequence_tokens), 0)
    }

    fn step(&mut self) {
        // A caller that stopped waiting (a trial's timeout, a closed HTTP connection) frees its
        // place in the batch; its sequence stays cached for a retry.
        for index in (0..self.active.len()).rev() {
            if self.active[index].job.reply.is_closed() {
                let active = self.active.swap_remove(index);
                self.keep_idle(active.sequence);
            }
        }
        if self.active.is_empty() {
            return;
        }
        let chunk = self.config.prefill_chunk.max(1);
        let feeds: Vec<usize> = self
            .active
            .iter()
            .map(|a| a.pending.len().min(chunk))
            .collect();
        let result = {
            let mut batch: Vec<(&mut Sequence, &[u32])> = self
                .active
                .iter_mut()
                .zip(&feeds)
                .map(|(a, &n)| (&mut a.sequence, &a.pending[..n]))
                .collect();
            self.model.forward(&mut batch)
        };
        let logits = match result {
            Ok(logits) if logits.len() == self.active.len() => logits,
            Ok(logits) => {
                let message = format!(
                    "the engine returned {} logit rows for a batch of {}",
                    logits.len(),
                    self.active.len()
                );
                return self.fail_all(&message);
            }
            Err(e) => return self.fail_all(&format!("inference failed: {e}")),
        };
        let mut finished = Vec::new();
        for (index, (row, fed)) in logits.into_iter().zip(feeds).enumerate() {
            let active = &mut self.active[index];
            active.pending.drain(..fed);
            if !active.pending.is_empty() {
                continue;
            }
            if let Some(stop) = sample_next(&self.model, &self.table, &mut self.mask, active, &row)
            {
                finished.push((index, stop));
            }
        }
        for (index, stop) in finished.into_iter().rev() {
            let active = self.active.swap_remove(index);
            self.finish(active, stop);
        }
    }

    fn finish(&mut self, active: Active, stop: Stop) {
        let Active {
            job,
            sequence,
            generated,
            reused,
            ..
        } = active;
        let _ = job.reply.send(Ok(Generation {
            tokens: generated,
            stop,
            reused_prompt_tokens: reused,
        }));
        self.keep_idle(sequence);
    }

    fn keep_idle(&mut self, sequence: Sequence) {
        self.clock += 1;
        self.idle.push(Idle {
            sequence,
            last_used: self.clock,
        });
        if self.idle.len() > self.config.cached_sequences
            && let Some(oldest) = (0..self.idle.len()).min_by_key(|&i| self.idle[i].last_used)
        {
            self.idle.swap_remove(oldest);
        }
    }

    fn fail_all(&mut self, message: &str) {
        for active in self.active.drain(..) {
            let _ = active.job.reply.send(Err(message.to_owned()));
        }
    }
}

/// Sample the next token of `active`; `Some` when it is done.
fn sample_next(
    model: &Model,
    table: &TokenTable,
    mask: &mut Vec<bool>,
    active: &mut Active,
    logits: &[f32],
) -> Option<Stop> {
    let token = match (&active.job.grammar, active.grammar_state) {
        (Some(grammar), Some(state)) => {
            mask.resize(table.len(), false);
            table.mask(grammar, state, mask);
            let token = active.sampler.sample(logits, Some(mask));
            if !mask.get(token as usize).copied().unwrap_or(false) {
                // Only an empty mask leads here, which the grammar never produces; end the
                // turn rather than emit a token the grammar forbids.
                return Some(Stop::Length);
            }
            token
        }
        _ => active.sampler.sample(logits, None),
    };
    if token == table.end_of_turn() || model.tokenizer().is_control(token) {
        return Some(Stop::EndOfTurn);
    }
    push_generated(active, table, &[token]);
    if let (Some(grammar), Some(state)) = (&active.job.grammar, active.grammar_state) {
        active.grammar_state = grammar.advance_bytes(state, table.bytes(token));
    }
    active.pending.push(token);
    feed_forced_text(model, table, active);
    check_limits(active)
}

/// Append the text the grammar forces next, so it is fed without sampling.
fn feed_forced_text(model: &Model, table: &TokenTable, active: &mut Active) {
    let (Some(grammar), Some(state)) = (&active.job.grammar, active.grammar_state) else {
        return;
    };
    let forced = grammar.forced_text(state);
    if forced.is_empty() {
        return;
    }
    let tokens = model.tokenizer().encode(&forced, false);
    active.grammar_state = grammar.advance_bytes(state, forced.as_bytes());
    active.pending.extend_from_slice(&tokens);
    push_generated(active, table, &tokens);
}

/// Whether `active` must stop before its next step: the call is complete, or a limit is hit.
fn check_limits(active: &Active) -> Option<Stop> {
    if let (Some(grammar), Some(state)) = (&active.job.grammar, active.grammar_state)
        && grammar.is_accepting(state)
    {
        return Some(Stop::EndOfTurn);
    }
    if active.job.grammar.is_some() && active.grammar_state.is_none() {
        return Some(Stop::Length);
    }
    if active.generated.len() >= active.job.max_tokens
        || active.sequence.len() + active.pending.len() >= active.sequence.capacity()
    {
        return Some(Stop::Length);
    }
    None
}

fn push_generated(active: &mut Active, table: &TokenTable, tokens: &[u32]) {
    active.generated.extend_from_slice(tokens);
    let Some(deltas) = &active.job.deltas else {
        return;
    };
    for &token in tokens {
        active.undelivered.extend_from_slice(table.bytes(token));
    }
    let valid = match std::str::from_utf8(&active.undelivered) {
        Ok(text) => text.len(),
        Err(e) => e.valid_up_to(),
    };
    if valid > 0 {
        let text = String::from_utf8_lossy(&active.undelivered[..valid]).into_owned();
        active.undelivered.drain(..valid);
        let _ = deltas.send(text);
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
