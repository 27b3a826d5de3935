//! `tern up`: all five services in one process, still talking over real gRPC
//! and real NATS, with a managed nats-server when TERN_NATS_URL is unset.

use anyhow::Context;
use tern_runtime::Shutdown;
use tern_runtime::managed_nats::ManagedNats;

use crate::config::TernConfig;

/// Run everything until SIGTERM/SIGINT, then drain and exit.
pub async fn up(mut cfg: TernConfig) -> anyhow::Result<()> {
    let mut nats = None;
    if cfg.queue.common.nats_url.is_none() {
        if cfg.queue.common.nats_security != Default::default() {
            anyhow::bail!(
                "TERN_NATS_TLS_CA, TERN_NATS_TLS_CERT/KEY, TERN_NATS_CREDS and TERN_NATS_NKEY \
                 need TERN_NATS_URL: the nats-server `tern up` manages has neither TLS nor users"
            );
        }
        let data_dir = cfg.queue.common.data_dir.clone();
        let managed = ManagedNats::start(&cfg.managed_nats, &data_dir).await?;
        println!("nats        {}", managed.url());
        cfg.set_nats_url(managed.url());
        nats = Some(managed);
    }

    // Servers first, so the addresses their clients use are listening.
    let resolver = tern_resolver::bind(cfg.resolver)
        .await
        .context("start resolver")?;
    let mailbox = tern_mailbox::bind(cfg.mailbox)
        .await
        .context("start mailbox")?;
    let queue = tern_queue::bind(cfg.queue).await.context("start queue")?;
    let delivery = tern_delivery::bind(cfg.delivery)
        .await
        .context("start delivery")?;
    let ingress = tern_ingress::bind(cfg.ingress)
        .await
        .context("start ingress")?;
    for (what, addr) in resolver
        .addrs()
        .into_iter()
        .chain(mailbox.addrs())
        .chain(queue.addrs())
        .chain(delivery.addrs())
        .chain(ingress.addrs())
    {
        println!("{what:<20} {addr}");
    }

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let mut tasks = tokio::task::JoinSet::new();
    let s = shutdown.clone();
    tasks.spawn(async move {
        (
            "resolver",
            resolver.run(s).await.map_err(anyhow::Error::from),
        )
    });
    let s = shutdown.clone();
    tasks.spawn(async move { ("mailbox", mailbox.run(s).await.map_err(anyhow::Error::from)) });
    let s = shutdown.clone();
    tasks.spawn(async move { ("queue", queue.run(s).await.map_err(anyhow::Error::from)) });
    let s = shutdown.clone();
    tasks.spawn(async move {
        (
            "delivery",
            delivery.run(s).await.map_err(anyhow::Error::from),
        )
    });
    let s = shutdown.clone();
    tasks.spawn(async move { ("ingress", ingress.run(s).await.map_err(anyhow::Error::from)) });
    println!("tern is up");

    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.context("service task panicked")?;
        if let Err(e) = result {
            tracing::error!(service = name, error = %format!("{e:#}"), "service stopped with an error");
            first_err.get_or_insert(e.context(name));
        }
        // One service stopping (for any reason) stops them all.
        shutdown.trigger();
    }
    if let Some(mut n) = nats.take() {
        n.stop();
    }
    first_err.map_or(Ok(()), Err)
}
