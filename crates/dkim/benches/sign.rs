//! Signing cost per message: one 4 KiB message, RSA-2048 and Ed25519.
//! `cargo bench -p tern-dkim --bench sign`; results in crates/dkim/README.md.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use tern_dkim::{Algorithm, KeyName, KeySet, generate, write_key};

fn bench(c: &mut Criterion) {
    let msg = common::message();
    for (alg, label) in [
        (Algorithm::Rsa, "rsa-2048"),
        (Algorithm::Ed25519, "ed25519"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let name = KeyName::new("example.com", "bench", alg).unwrap();
        write_key(dir.path(), &name, &generate(alg, 2048).unwrap()).unwrap();
        let set = KeySet::load(Path::new(dir.path()), &[], None).unwrap();
        c.bench_function(&format!("sign 4 KiB {label}"), |b| {
            b.iter(|| set.sign("example.com", &msg).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
