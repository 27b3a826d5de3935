//! Compiles the tern.v1 contracts with protox (pure Rust; no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tern/v1/envelope.proto",
        "tern/v1/resolver.proto",
        "tern/v1/mailbox.proto",
        "tern/v1/queue.proto",
        "tern/v1/inject.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
