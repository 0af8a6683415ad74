//! Sampling: greedy picks the arg max, seeded sampling is reproducible, masks are obeyed, top-p narrows the choice.

use offswitch_llm::{Sampler, SamplingParams};

fn draws(params: SamplingParams, logits: &[f32], mask: Option<&[bool]>, n: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(params);
    (0..n).map(|_| sampler.sample(logits, mask)).collect()
}

const LOGITS: [f32; 6] = [1.0, 3.0, 2.5, -1.0, 0.5, 2.9];

#[test]
fn greedy_and_masked_greedy() {
    let greedy = SamplingParams::default();
    assert_eq!(draws(greedy, &LOGITS, None, 3), vec![1, 1, 1]);
    let mask = [true, false, true, true, true, false];
    assert_eq!(draws(greedy, &LOGITS, Some(&mask), 2), vec![2, 2]);
}

#[test]
fn seeded_sampling_is_reproducible_and_respects_the_mask() {
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        seed,
    };
    let a = draws(params(7), &LOGITS, None, 200);
    assert_eq!(a, draws(params(7), &LOGITS, None, 200));
    assert_ne!(a, draws(params(8), &LOGITS, None, 200));
    // With temperature 1 every token has real probability; 200 draws see at least the four likeliest.
    for id in [0, 1, 2, 5] {
        assert!(a.contains(&id), "token {id} never drawn in {a:?}");
    }
    let mask = [false, false, true, true, false, false];
    let masked = draws(params(7), &LOGITS, Some(&mask), 200);
    assert!(masked.iter().all(|&id| id == 2 || id == 3), "{masked:?}");
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        seed: 3,
    };
    // Probabilities (softmax): id1 ~0.33, id5 ~0.30, id2 ~0.20 ...; mass 0.5 is reached with ids 1 and 5.
    let seen = draws(params, &LOGITS, None, 300);
    assert!(seen.iter().all(|&id| id == 1 || id == 5), "{seen:?}");
    assert!(seen.contains(&1) && seen.contains(&5));
}

#[test]
fn degenerate_logits_do_not_panic_and_stay_in_the_mask() {
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        seed: 1,
    };
    let logits = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY, 1.0];
    let mask = [true, true, true, false];
    let picked = draws(params, &logits, Some(&mask), 5);
    assert!(picked.iter().all(|&id| id == 0 || id == 2), "{picked:?}");
    let with_inf = [0.0, f32::INFINITY, 3.0];
    assert_eq!(draws(params, &with_inf, None, 3), vec![1, 1, 1]);
}
