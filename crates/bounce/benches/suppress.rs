//! The cost of checking one API batch against a large suppression list:
//! 10,000 recipients, half of them listed, against 1,000,000 entries.
//! `cargo bench -p tern-bounce --bench suppress`; results in
//! crates/bounce/README.md.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use tern_bounce::suppress::Index;

const ENTRIES: u32 = 1_000_000;

fn batch() -> Vec<String> {
    (0..10_000u32)
        .map(|i| {
            format!(
                "user{}@example.{}",
                i * 97,
                if i % 2 == 0 { "com" } else { "net" }
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("suppression");
    g.sample_size(10);
    g.bench_function("fill 1,000,000 entries", |b| {
        b.iter(|| {
            let mut ix = Index::default();
            for i in 0..ENTRIES {
                ix.insert("acme", "", &format!("user{i}@example.com"));
            }
            ix
        })
    });
    let mut ix = Index::default();
    for i in 0..ENTRIES {
        ix.insert("acme", "", &format!("user{i}@example.com"));
    }
    let batch = batch();
    assert_eq!(
        ix.check("acme", "spring", &batch)
            .iter()
            .filter(|&&h| h)
            .count(),
        5_000
    );
    g.bench_function("check 10,000 against 1,000,000", |b| {
        b.iter(|| ix.check("acme", "spring", &batch))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
