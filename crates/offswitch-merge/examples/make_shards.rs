//! Shard databases of a large sharded run for the merge and viewer benchmarks, without running
//! trials: every trial is a copy of a real trial of its cell (transcript, labels, file changes,
//! event streams) under its own key. `cargo run --release -p offswitch-merge --example make_shards --
//! TEMPLATE.db OUT_DIR TRIALS SHARDS` writes OUT_DIR/shard-<i>.db; the template is any run
//! database: its latest run's configuration and provenance, and its trials as one per cell.

use std::path::PathBuf;
use std::time::Instant;

use offswitch_core::TrialKey;
use offswitch_harness::runner::stored_config;
use offswitch_harness::shard::{PlanLayout, Shard, decode};
use offswitch_store::Store;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [template, out, trials, shards] = args.as_slice() else {
        eprintln!("usage: make_shards TEMPLATE.db OUT_DIR TRIALS SHARDS");
        std::process::exit(2);
    };
    let trials: u64 = trials.parse().expect("TRIALS is a number");
    let shards: u32 = shards.parse().expect("SHARDS is a number");
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).expect("create OUT_DIR");

    let template = Store::open(std::path::Path::new(template)).expect("open the template");
    let run = template
        .latest_run()
        .expect("read the template")
        .expect("the template holds a run");
    let templates = template
        .trials(&run.id)
        .expect("read the template's trials");
    assert!(!templates.is_empty(), "the template run has no trial");
    let provenance = template.provenance(&run.id).expect("read the provenance");
    let mut config = stored_config(run.id.as_str(), &run.config).expect("a run configuration");

    // The template's cells (its trials' scenarios and variants), each trial a copy of the
    // template's trial of its cell; epochs to make TRIALS.
    let cells: Vec<(String, String)> = templates
        .iter()
        .map(|t| (t.key.scenario.clone(), t.key.variant.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let of_cell = |scenario: &str, variant: &str| {
        templates
            .iter()
            .find(|t| t.key.scenario == scenario && t.key.variant == variant)
            .expect("a template trial per cell")
    };
    let epochs = trials.div_ceil(cells.len() as u64) as u32;
    let layout = PlanLayout {
        models: vec![templates[0].key.model.clone()],
        cells,
        epochs,
    };
    config.epochs = epochs;
    config.plan = Some(layout.clone());
    let started = Instant::now();
    for index in 1..=shards {
        let shard = Shard {
            index,
            count: shards,
        };
        config.shard = Some(shard);
        let path = out.join(format!("shard-{index}.db"));
        let store = Store::open(&path).expect("create a shard database");
        let (id, _lock) = store
            .create_locked_run_with_id(
                "bench-merge",
                &serde_json::to_value(&config).expect("JSON"),
                None,
                provenance.as_ref(),
            )
            .expect("create the shard's run");
        let mut position = shard.first();
        while position < layout.total() {
            let (epoch, model, cell) = decode(position, 1, layout.cells.len());
            let (scenario, variant) = &layout.cells[cell];
            let mut trial = of_cell(scenario, variant).clone();
            trial.key = TrialKey {
                model: layout.models[model].clone(),
                scenario: layout.cells[cell].0.clone(),
                variant: layout.cells[cell].1.clone(),
                epoch,
            };
            trial.seed = position;
            store.insert_trial(&id, &trial).expect("insert a trial");
            position += u64::from(shards);
        }
        store
            .set_run_status(&id, offswitch_store::RunStatus::Complete)
            .expect("mark the shard complete");
    }
    eprintln!(
        "{} trials in {shards} shards written to {} in {:.1}s",
        layout.total(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
}
