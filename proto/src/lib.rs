//! The `tern.v1` contracts: gRPC services (resolver, queue admin, accounts,
//! injection) and the envelope types that travel on the JetStream bus.

#![allow(missing_docs, clippy::all)] // generated code

/// Generated from `proto/tern/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("tern.v1");
}

pub use v1::*;
