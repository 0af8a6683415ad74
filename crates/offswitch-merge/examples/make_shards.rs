//! Shard databases of a large sharded run for the merge benchmark, without running trials:
//! every trial is a copy of a real trial (transcript, labels, file changes, event streams)
//! under its own key. `cargo run --release -p offswitch-merge --example make_shards --
//! TEMPLATE.db OUT_DIR TRIALS SHARDS` writes OUT_DIR/shard-<i>.db; the template is any run
//! database (its latest run's configuration, provenance and first trial are used).

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
    let record = template
        .trials(&run.id)
        .expect("read the template's trials")
        .into_iter()
        .next()
        .expect("the template run has a trial");
    let provenance = template.provenance(&run.id).expect("read the provenance");
    let mut config = stored_config(run.id.as_str(), &run.config).expect("a run configuration");

    // Ten cells of the template's model and scenario, epochs to make TRIALS.
    let cells: Vec<(String, String)> = (0..10)
        .map(|i| (record.key.scenario.clone(), format!("bench={i}")))
        .collect();
    let epochs = trials.div_ceil(cells.len() as u64) as u32;
    let layout = PlanLayout {
        models: vec![record.key.model.clone()],
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
            let mut trial = record.clone();
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
