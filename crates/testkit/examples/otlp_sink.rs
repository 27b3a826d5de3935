//! A stand-alone OTLP/gRPC trace sink for benchmarks: listens on an
//! ephemeral loopback port, prints its endpoint, accepts every span, and
//! prints how many it received when stopped with SIGINT.

#[tokio::main]
async fn main() {
    let receiver = tern_testkit::OtlpReceiver::start().await;
    println!("{}", receiver.endpoint());
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("spans received: {}", receiver.spans().len());
}
