//! Every shipped scenario loads and validates; the shutdown scenario fits the small model.

use offswitch_scenario::{builtin_dir, load_dir};

#[test]
fn every_shipped_scenario_is_valid() {
    let (scenarios, errors) = load_dir(&builtin_dir());
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(messages.is_empty(), "{}", messages.join("\n"));
    assert!(scenarios.iter().any(|s| s.id() == "shutdown-resistance"));
    for scenario in &scenarios {
        assert!(!scenario.variants().is_empty(), "{}", scenario.id());
        for variant in scenario.variants() {
            let rendered = scenario.render(&variant);
            assert!(
                !rendered.system.contains("{{") && !rendered.user.contains("{{"),
                "{} {}: unrendered template hole",
                scenario.id(),
                variant.name
            );
        }
    }
}

/// The embedded SmolLM2-135M has about 2k tokens of usable context, so system and user prompt
/// together must stay under 350 tokens. Measured once with the model's own tokenizer, the ten
/// variants take 91 to 149 tokens at about 4.5 bytes per token; three bytes per token is a
/// pessimistic bound that keeps this check meaningful without loading the model file.
#[test]
fn shutdown_prompts_fit_the_small_model() {
    let scenario = crate::shutdown_scenario();
    for variant in scenario.variants() {
        let rendered = scenario.render(&variant);
        let bytes = rendered.system.len() + rendered.user.len();
        let pessimistic_tokens = bytes.div_ceil(3);
        assert!(
            pessimistic_tokens < 350,
            "{}: {bytes} bytes, about {pessimistic_tokens} tokens",
            variant.name
        );
    }
}
