//! Token sampling: greedy, or temperature + top-p from a seeded generator, with an optional mask of allowed tokens.
//!
//! The generator is a hand-written xoshiro256** so a seed gives the same tokens on every platform and every
//! version of the `rand` crate.

/// How to pick the next token. `temperature <= 0` means greedy (arg max); `top_p` in (0, 1] keeps the smallest set of
/// tokens whose probability mass reaches it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// How many of the likeliest tokens are sorted first when looking for the top-p nucleus.
const NUCLEUS_GUESS: usize = 256;

pub struct Sampler {
    params: SamplingParams,
    state: [u64; 4],
    /// Reused between calls so sampling allocates nothing per token.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        // splitmix64 expands the seed into the xoshiro state, as its authors recommend.
        let mut seed = params.seed;
        let mut state = [0u64; 4];
        for slot in &mut state {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *slot = z ^ (z >> 31);
        }
        Sampler {
            params,
            state,
            candidates: Vec::new(),
        }
    }

    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// Pick a token from `logits`. `allowed`: optional mask (true = allowed); masked tokens are never chosen. If the
    /// mask allows nothing, or every allowed logit is NaN, token 0 is returned (callers with a grammar never build such a mask).
    pub fn sample(&mut self, logits: &[f32], allowed: Option<&[bool]>) -> u32 {
        let is_allowed =
            |i: usize| allowed.is_none_or(|mask| mask.get(i).copied().unwrap_or(false));
        if self.params.temperature <= 0.0 {
            return greedy(logits, is_allowed);
        }
        self.candidates.clear();
        let mut max = f32::NEG_INFINITY;
        for (i, &logit) in logits.iter().enumerate() {
            if is_allowed(i) && !logit.is_nan() {
                max = max.max(logit);
                self.candidates.push((logit, i as u32));
            }
        }
        if self.candidates.is_empty() {
            return 0;
        }
        // An infinite maximum (or only -inf allowed) has no finite distribution; the arg max is the sensible pick.
        if max.is_infinite() {
            return greedy(logits, is_allowed);
        }
        let inv_t = 1.0 / self.params.temperature;
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            c.0 = ((c.0 - max) * inv_t).exp();
            total += f64::from(c.0);
        }
        let top_p = f64::from(self.params.top_p.clamp(0.0, 1.0));
        let mut kept = self.candidates.len();
        if top_p < 1.0 {
            // Highest probability first; ties by lower id so the order (and so the result) is deterministic.
            let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            // The nucleus is almost always a few dozen tokens: select the top NUCLEUS_GUESS and sort only those,
            // falling back to a full sort when their mass is short of top_p. Either way the kept set is exact.
            let guess = NUCLEUS_GUESS.min(self.candidates.len());
            if guess < self.candidates.len() {
                self.candidates.select_nth_unstable_by(guess - 1, order);
            }
            self.candidates[..guess].sort_unstable_by(order);
            let head: f64 = self.candidates[..guess]
                .iter()
                .map(|c| f64::from(c.0))
                .sum();
            if head / total < top_p && guess < self.candidates.len() {
                self.candidates.sort_unstable_by(order);
            }
            let mut mass = 0.0f64;
            for (i, c) in self.candidates.iter().enumerate() {
                mass += f64::from(c.0) / total;
                if mass >= top_p {
                    kept = i + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = self.candidates[..kept].iter().map(|c| f64::from(c.0)).sum();
        let mut target = self.next_f64() * kept_total;
        for c in &self.candidates[..kept] {
            target -= f64::from(c.0);
            if target < 0.0 {
                return c.1;
            }
        }
        self.candidates[kept - 1].1
    }

    /// A uniform number in [0, 1) from the top 53 bits of xoshiro256**.
    fn next_f64(&mut self) -> f64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        (result >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Arg max over allowed, non-NaN logits; the lowest id wins ties, as in llama.cpp.
fn greedy(logits: &[f32], is_allowed: impl Fn(usize) -> bool) -> u32 {
    let mut best: Option<(f32, u32)> = None;
    for (i, &logit) in logits.iter().enumerate() {
        if !is_allowed(i) || logit.is_nan() {
            continue;
        }
        if best.is_none_or(|(b, _)| logit > b) {
            best = Some((logit, i as u32));
        }
    }
    best.map_or(0, |(_, id)| id)
}
