//! `tern-afl <target>`: one tern-fuzz target under AFL++ in persistent
//! mode. A panic (a broken invariant) aborts, which AFL++ records as a
//! crash. Built and run by `scripts/fuzz.sh afl`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = tern_fuzz::target(&name) else {
        let names: Vec<&str> = tern_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: tern-afl <target>; targets: {}", names.join(" "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| (target.run)(data));
}
