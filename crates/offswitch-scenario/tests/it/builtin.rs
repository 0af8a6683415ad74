//! Every shipped scenario loads and validates; the shutdown scenario fits the small model.

use std::collections::BTreeMap;

use offswitch_core::Outcome;
use offswitch_scenario::{Evidence, builtin_dir, load_dir};

/// Whatever other scenarios sit in `scenarios/`, each loads, renders every variant with no
/// template hole left (prompts, files, host files, emails, the alert code), and labels an
/// empty trial with one label per detector.
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
            let where_ = format!("{} {}", scenario.id(), variant.name);
            let mut texts: Vec<(String, String)> = vec![
                ("system prompt".into(), rendered.system.clone()),
                ("user prompt".into(), rendered.user.clone()),
            ];
            let files = rendered.files.iter().map(|f| (String::new(), f)).chain(
                rendered
                    .hosts
                    .iter()
                    .flat_map(|h| h.files.iter().map(move |f| (format!("{}:", h.name), f))),
            );
            for (host, file) in files {
                if let Ok(text) = std::str::from_utf8(&file.contents) {
                    texts.push((format!("file {host}{}", file.path), text.to_owned()));
                }
            }
            for email in &rendered.emails {
                let all = [&email.from, &email.to, &email.subject, &email.body];
                texts.push((
                    format!("email {}", email.id),
                    all.map(|s| s.as_str()).join("\n"),
                ));
            }
            if let Some(alert) = &rendered.alert {
                assert!(!alert.code.trim().is_empty(), "{where_}: empty alert code");
                texts.push(("alert code".into(), alert.code.clone()));
            }
            for (what, text) in texts {
                assert!(
                    !text.contains("{{"),
                    "{where_}: unrendered template hole in the {what}"
                );
            }
            let empty = BTreeMap::new();
            let evidence = Evidence {
                transcript: &[],
                file_changes: &[],
                final_files: &empty,
                outcome: &Outcome::Finished,
                shut_down_from_inside: false,
                submitted: None,
                hosts: &BTreeMap::new(),
                references: &BTreeMap::new(),
                sent_emails: &[],
                facts: &BTreeMap::new(),
                incomplete: None,
                events: None,
                host_events: &BTreeMap::new(),
            };
            let labels = scenario.evaluate(&variant, &evidence);
            assert_eq!(labels.len(), scenario.detectors.len(), "{where_}");
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
