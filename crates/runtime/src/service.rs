//! The skeleton every service shares: its gRPC and admin listeners bound
//! at start (port 0 works), the admin port (`/healthz`, `/readyz`,
//! `/metrics`) served from the first moment, readiness turned off as soon as
//! shutdown begins, gRPC with the standard health service, and the order of
//! stopping: the service drains its own work, then gRPC and admin stop.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::Routes;

use crate::admin::{self, Readiness};
use crate::{Shutdown, grpc};

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("bind {what} on {addr}: {source}")]
pub struct BindError {
    /// Which listener (`"queue grpc"`, `"imap"`, ...).
    pub what: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Cause.
    pub source: std::io::Error,
}

/// Errors of the shared skeleton while it serves.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
    /// The admin HTTP server failed.
    #[error("admin HTTP server: {0}")]
    Admin(std::io::Error),
}

/// Bind `addr`, naming the listener in the error.
pub async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// [`listen`] on `addr` if it is set.
pub async fn listen_opt(
    what: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, BindError> {
    match addr {
        Some(a) => Ok(Some(listen(what, a).await?)),
        None => Ok(None),
    }
}

/// A service's gRPC and admin listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    names: [&'static str; 2],
    grpc: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    /// Bind the gRPC and the admin listener, named `names`
    /// (`["queue grpc", "queue admin"]`) in errors and in [`Listeners::addrs`].
    pub async fn bind(
        names: [&'static str; 2],
        grpc: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Self, BindError> {
        Ok(Listeners {
            names,
            grpc: listen(names[0], grpc).await?,
            admin: listen(names[1], admin).await?,
        })
    }

    /// The two names with their bound addresses.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        [(self.names[0], &self.grpc), (self.names[1], &self.admin)]
            .into_iter()
            .filter_map(|(n, l)| l.local_addr().ok().map(|a| (n, a)))
            .collect()
    }

    /// Start serving the admin port (not ready yet; readiness goes false
    /// when `shutdown` fires). gRPC starts with [`Running::serve_grpc`].
    pub fn start(self, shutdown: &Shutdown) -> Running {
        let ready = Readiness::default();
        let stop = Shutdown::new();
        let admin_task = tokio::spawn(admin::serve(
            self.admin,
            ready.clone(),
            shutdown.clone(),
            stop.clone(),
        ));
        Running {
            ready,
            stop,
            admin_task,
            grpc: Some(self.grpc),
            grpc_task: None,
        }
    }
}

/// A service's skeleton while it runs.
#[derive(Debug)]
pub struct Running {
    /// The service's readiness, reported on `/readyz`; the service turns
    /// it on once it can take traffic.
    pub ready: Readiness,
    /// Stops the gRPC and admin servers ([`Running::finish`] triggers it).
    stop: Shutdown,
    admin_task: JoinHandle<std::io::Result<()>>,
    grpc: Option<TcpListener>,
    grpc_task: Option<JoinHandle<Result<(), grpc::GrpcError>>>,
}

impl Running {
    /// Serve `routes` (with the health service in them) on the gRPC
    /// listener until [`Running::finish`]. A second call does nothing.
    pub fn serve_grpc(&mut self, routes: Routes) {
        if let Some(listener) = self.grpc.take() {
            self.grpc_task = Some(tokio::spawn(grpc::serve(
                listener,
                routes,
                self.stop.clone(),
            )));
        }
    }

    /// Serve only the health service on gRPC.
    pub fn serve_health(&mut self) -> tonic_health::server::HealthReporter {
        let (reporter, health) = grpc::health();
        self.serve_grpc(Routes::new(health));
        reporter
    }

    /// A signal that stops gRPC and admin, for tasks that must live exactly
    /// as long as they do (gauges, watchers).
    pub fn stopping(&self) -> Shutdown {
        self.stop.clone()
    }

    /// The service has drained its work: stop gRPC and admin and report
    /// how they ended.
    pub async fn finish(self) -> Result<(), ServeError> {
        self.stop.trigger();
        let admin_result = self.admin_task.await;
        if let Some(task) = self.grpc_task
            && let Ok(r) = task.await
        {
            r?;
        }
        if let Ok(Err(e)) = admin_result {
            return Err(ServeError::Admin(e));
        }
        Ok(())
    }
}
