//! How long `Store::cell_counts` takes on a run: the first call (aggregated by SQL and kept)
//! and the second (read back). `cargo run --release -p offswitch-store --example counts_bench
//! -- DB RUN`.

use std::time::Instant;

use offswitch_store::Store;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, run] = args.as_slice() else {
        eprintln!("usage: counts_bench DB RUN");
        std::process::exit(2);
    };
    let store = Store::open(std::path::Path::new(db)).expect("open the database");
    for call in ["first", "second"] {
        let start = Instant::now();
        let cells = store.cell_counts(run).expect("counts");
        let trials: u64 = cells.iter().map(|c| c.trials()).sum();
        println!(
            "{call} call: {} cells, {trials} trials in {:.3}s",
            cells.len(),
            start.elapsed().as_secs_f64()
        );
    }
}
