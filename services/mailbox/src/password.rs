//! Argon2id password hashing and verification with bounded memory.
//!
//! Argon2id with the default parameters fills 19 MiB of working memory per
//! hash. Hashes run at most one per core (the work is CPU-bound, so more at
//! once would only queue on the cores), and each borrows its working memory
//! from a pool of reusable buffers instead of allocating it. When the argon2
//! crate allocated 19 MiB per hash, glibc kept the freed memory in the arena
//! of whichever blocking thread had run the hash, so a login burst left up
//! to one 19 MiB block per thread arena behind: 20 logins at once took the
//! service from 37 MiB to over 300 MiB and it never shrank. With the pool the
//! service holds at most one buffer per core, allocated on first use.

use std::sync::{Mutex, OnceLock};

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::Semaphore;

/// Largest working memory a stored hash may ask for (256 MiB). A hash
/// with a bigger `m=` fails verification instead of growing a buffer.
const MAX_BLOCKS: usize = 256 * 1024;

/// What can go wrong hashing a new password.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The argon2 crate refused the input (say, a password over its limit).
    #[error("argon2: {0}")]
    Argon2(#[from] argon2::Error),
    /// The result could not be written as a PHC string.
    #[error("PHC encoding: {0}")]
    Phc(#[from] argon2::password_hash::phc::Error),
    /// The parameters could not be written as a PHC string.
    #[error("PHC parameters: {0}")]
    Params(#[from] argon2::password_hash::Error),
    /// The blocking task running the hash panicked or was cancelled.
    #[error("hashing task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One permit per core: hashes in flight at once.
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores)
    })
}

/// Reusable Argon2 working buffers, at most one per concurrent user.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<Block>>>);

impl Pool {
    /// Run `f` over `blocks` blocks of working memory borrowed from the pool.
    fn with_memory<R>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        // A poisoned pool still holds whole buffers.
        let free = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = free().pop().unwrap_or_default();
        if buf.len() < blocks {
            buf.resize(blocks, Block::new());
        }
        let out = f(&mut buf[..blocks]);
        free().push(buf);
        out
    }
}

/// The process's pool (hashes are capped by [`slots`], so it never holds
/// more buffers than cores).
fn with_memory<R>(blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default).with_memory(blocks, f)
}

/// Run `f` on the blocking pool once a hashing slot is free.
async fn run<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    // The semaphore is never closed, so acquiring cannot fail.
    let _slot = slots().acquire().await.ok();
    tokio::task::spawn_blocking(f).await
}

fn hash_blocking(password: &[u8]) -> Result<String, HashError> {
    let argon = Argon2::default();
    let params = argon.params().clone();
    let salt = Salt::generate();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_memory(params.block_count(), |mem| {
        argon.hash_password_into_with_memory(password, &salt, &mut out, mem)
    })?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(Output::new(&out)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`. Any malformed or
/// unsupported hash is a mismatch.
fn verify_blocking(password: &[u8], phc: &str) -> bool {
    let check = || -> Option<bool> {
        let hash = PasswordHash::new(phc).ok()?;
        let expected = hash.hash.as_ref()?;
        let salt = hash.salt.as_ref()?;
        let algorithm = Algorithm::try_from(hash.algorithm.as_str()).ok()?;
        let version = hash
            .version
            .map_or(Ok(Version::default()), Version::try_from);
        let params = Params::try_from(&hash).ok()?;
        if params.block_count() > MAX_BLOCKS {
            tracing::warn!(
                m_cost = params.m_cost(),
                "password hash asks for more Argon2 memory than allowed"
            );
            return None;
        }
        let argon = Argon2::new(algorithm, version.ok()?, params);
        let mut out = vec![0u8; expected.len()];
        with_memory(argon.params().block_count(), |mem| {
            argon.hash_password_into_with_memory(password, salt, &mut out, mem)
        })
        .ok()?;
        // Output's equality is constant-time.
        Some(Output::new(&out).ok()? == *expected)
    };
    check().unwrap_or(false)
}

/// Hash a password with Argon2id (default parameters, random salt) into a
/// PHC string.
pub async fn hash(password: String) -> Result<String, HashError> {
    run(move || hash_blocking(password.as_bytes())).await?
}

/// Whether `password` matches `phc`; with `None`, a check against a hash
/// nobody's password matches, so that "no such user" takes as long as
/// "wrong password". Always false then.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    run(move || match phc {
        Some(phc) => verify_blocking(password.as_bytes(), &phc),
        None => {
            let _ = verify_blocking(password.as_bytes(), dummy_hash());
            false
        }
    })
    .await
    .unwrap_or(false)
}

/// A hash nobody's password matches (made once, on first use).
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking(b"tern-dummy-password-for-timing").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let hash = hash_blocking(b"pw").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_blocking(b"pw", &hash));
        assert!(!verify_blocking(b"wrong", &hash));
        assert!(!verify_blocking(b"pw", "not a hash"));
    }

    #[test]
    fn verifies_hashes_made_by_the_argon2_crate_with_other_parameters() {
        // Hashes stored before this module, and hashes with other costs
        // (here 8 MiB, 3 passes, 2 lanes; and Argon2i).
        let stock = Argon2::default().hash_password(b"pw").unwrap().to_string();
        assert!(verify_blocking(b"pw", &stock));
        let params = Params::new(8 * 1024, 3, 2, None).unwrap();
        for alg in [Algorithm::Argon2id, Algorithm::Argon2i] {
            let other = Argon2::new(alg, Version::V0x13, params.clone())
                .hash_password(b"pw")
                .unwrap()
                .to_string();
            assert!(verify_blocking(b"pw", &other), "{other}");
            assert!(!verify_blocking(b"pW", &other), "{other}");
        }
    }

    #[test]
    fn hashes_asking_for_too_much_memory_fail_without_allocating_it() {
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$\
                    YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";
        assert!(!verify_blocking(b"pw", huge));
    }

    #[test]
    fn the_pool_reuses_buffers_and_keeps_one_per_concurrent_use() {
        let pool = Pool::default();
        pool.with_memory(8, |a| {
            pool.with_memory(4, |b| assert_eq!((a.len(), b.len()), (8, 4)));
        });
        assert_eq!(pool.0.lock().unwrap().len(), 2);
        // Sequential uses take a pooled buffer: no third one, none shrunk.
        pool.with_memory(8, |a| assert_eq!(a.len(), 8));
        pool.with_memory(2, |a| assert_eq!(a.len(), 2));
        let sizes: Vec<usize> = pool.0.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n >= 4), "{sizes:?}");
    }
}
