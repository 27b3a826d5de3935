//! `tern`: one binary for every Tern service and the operator commands.
//! It parses arguments and dispatches; the work lives in the service crates.

mod campaign;
mod cli;
mod config;
mod suppress;
mod tenant;
mod up;
mod webhook;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
