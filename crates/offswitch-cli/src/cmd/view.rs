//! `offswitch view`: the web viewer over a run database and this user's guard sessions, on
//! loopback, behind a token printed at start.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use offswitch_server::viewer::{Viewer, new_token};

use super::report::open_existing_store_checked;

#[derive(clap::Args)]
pub struct Args {
    /// The run database.
    #[arg(long, env = "OFFSWITCH_DB", default_value = "offswitch.db")]
    pub db: PathBuf,
    /// The port on 127.0.0.1 (0: any free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = open_existing_store_checked(&args.db)?;
    // Counts are kept per run; a run that has none yet is aggregated on its first view.
    let published = super::compare::shipped_figures().ok();
    let token = new_token();
    let viewer = Viewer {
        store: Mutex::new(store),
        token: token.clone(),
        guard_dir: offswitch_guard::control::control_dir(),
        published,
        headlines: Box::new(|run, ids| {
            let (scenarios, _missing) = super::report::scenarios_of(run, ids);
            super::report::headlines(&scenarios)
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
            super::invalid_input(format!("cannot listen on {address}: {e}"))
        })?;
        let local = listener.local_addr()?;
        // The address is the first line (scripts read it); what follows is for a person, and
        // a reader that has gone away does not stop the server.
        let mut out = std::io::stdout();
        writeln!(out, "offswitch view: http://{local}/?token={token}")?;
        out.flush()?;
        let _ = writeln!(
            out,
            "serving {} on loopback only; the address above carries the access token (Ctrl-C stops)",
            args.db.display()
        )
        .and_then(|()| out.flush());
        tokio::select! {
            served = offswitch_server::viewer::serve(listener, viewer) => served?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
