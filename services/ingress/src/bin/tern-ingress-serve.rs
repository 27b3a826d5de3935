//! Run ingress on its own, configured from `TERN_*` environment variables,
//! until SIGTERM/SIGINT. Built only with the `bench-server` feature, for the
//! benchmark in `deploy/bench/ingress` (building this crate alone is much
//! cheaper than the whole `tern` binary). Prints `<listener> <address>` for
//! every bound listener.

use tern_runtime::Shutdown;
use tern_runtime::config::Source;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = Source::load(None)?;
    let config = tern_ingress::Config::from_source(&src)?;
    src.finish()?;
    let bound = tern_ingress::bind(config).await?;
    for (name, addr) in bound.addrs() {
        println!("{name} {addr}");
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    bound.run(shutdown).await?;
    Ok(())
}
