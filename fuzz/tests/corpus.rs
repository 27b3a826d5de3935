//! Every fuzz target in `cargo test`: its corpus (`fuzz/corpus/<target>/`)
//! replayed, then seeded mutations of it (bit flips, interesting octets
//! and tokens, cut, duplicated and spliced ranges). A failure names the
//! target and seed and writes the input to `target/fuzz-failures/`, ready
//! to be added to the corpus once fixed.
//!
//! `TERN_FUZZ_ITERS` (default 4000) sets the mutations per target,
//! `TERN_FUZZ_SEED` the first seed, `TERN_FUZZ_SECONDS` a time bound per
//! target (`scripts/fuzz.sh props` uses it).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tern_fuzz::{Rng, TARGETS, target};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), data)
        })
        .collect()
}

/// Octet strings that tend to reach edge cases in these protocols.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r\n\r\n",
    b"{5}\r\n",
    b"{0+}\r\n",
    b"{99999999999999999999}\r\n",
    b"~{3}\r\n",
    b"\"",
    b"\\",
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b"=?utf-8?b?",
    b"?=",
    b"--",
    b"boundary=",
    b"; ",
    b":",
    b"0",
    b"-1",
    b"4294967296",
    b"18446744073709551616",
    b"\0",
    b"\xff",
    "ü".as_bytes(),
    b"[IPv6:::1]",
    b"\\u0000",
    b"\":\"",
    b"{\"",
    b"[",
    b"]",
];

/// Single octets with a meaning in one of the protocols.
const SPICE: &[u8] = b"\r\n .:;=\"\\(){}<>0+-";

fn mutate(rng: &mut Rng, input: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next_u64() as u8),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let piece = v[at.min(end)..end].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())].1;
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(256)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            6 => v.truncate(at),
            _ => {
                let i = rng.below(v.len().max(1));
                if let Some(b) = v.get_mut(i) {
                    *b = SPICE[rng.below(SPICE.len())];
                }
            }
        }
    }
    v.truncate(1 << 16);
    v
}

/// Runs `input` through the target; on a panic, saves it and fails the
/// test with where to find it.
fn run_one(name: &str, run: fn(&[u8]), input: &[u8], what: &str) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_ok() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{}", what.replace(['/', ' '], "_")));
    let _ = std::fs::write(&file, input);
    panic!(
        "target {name} failed on {what}: input saved to {}",
        file.display()
    );
}

fn fuzz(name: &str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "the corpus of {name} is empty");
    for (path, data) in &seeds {
        run_one(name, t.run, data, path);
    }
    let iters = env_u64("TERN_FUZZ_ITERS").unwrap_or(4000);
    let first = env_u64("TERN_FUZZ_SEED").unwrap_or(1);
    let deadline = env_u64("TERN_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let mut done = 0u64;
    for seed in first..first.saturating_add(iters) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut rng = Rng::new(seed);
        let base = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, base, &seeds);
        run_one(name, t.run, &input, &format!("seed {seed}"));
        done += 1;
    }
    eprintln!("{name}: {} corpus inputs, {done} mutations", seeds.len());
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(dirs, names);
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz(stringify!($name));
            }
        )*
        #[test]
        fn every_target_is_tested_here() {
            let here = [$(stringify!($name)),*];
            for t in TARGETS {
                assert!(here.contains(&t.name), "{} is not run by cargo test", t.name);
            }
        }
    };
}

targets!(
    smtp_command,
    smtp_session,
    smtp_data,
    proxy_header,
    imap_command,
    imap_framer,
    pop3,
    mime,
    bounce_report,
    inject_request,
    dns_answer,
);
