//! Run the mailbox on its own, configured from `TERN_*` environment
//! variables, until SIGTERM/SIGINT. Used by the benchmark in
//! `deploy/bench/mailbox` (building only this crate is much cheaper than the
//! whole `tern` binary). Prints `<listener> <address>` for every bound
//! listener, then `ready` once it serves.
//!
//! `mailbox_serve --add-user ADDRESS:PASSWORD` (repeatable) creates accounts over
//! the Accounts gRPC API once the service is up (existing ones are kept).

use std::time::Duration;

use tern_proto::AddUserRequest;
use tern_proto::accounts_client::AccountsClient;
use tern_runtime::Shutdown;
use tern_runtime::config::Source;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut users = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--add-user", Some(u)) => match u.split_once(':') {
                Some((addr, pw)) => users.push((addr.to_string(), pw.to_string())),
                None => return Err("--add-user takes ADDRESS:PASSWORD".into()),
            },
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let src = Source::load(None)?;
    let config = tern_mailbox::Config::from_source(&src)?;
    src.finish()?;
    let bound = tern_mailbox::bind(config).await?;
    let mut grpc = None;
    for (name, addr) in bound.addrs() {
        println!("{name} {addr}");
        if name == "mailbox grpc" {
            grpc = Some(addr);
        }
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let task = tokio::spawn(bound.run(shutdown));
    if let Some(addr) = grpc {
        let mut client = loop {
            match AccountsClient::connect(format!("http://{addr}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        for (address, password) in users {
            let r = client
                .add_user(AddUserRequest {
                    address: address.clone(),
                    password,
                })
                .await;
            match r {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(format!("add {address}: {s}").into()),
            }
        }
    }
    println!("ready");
    task.await??;
    Ok(())
}
