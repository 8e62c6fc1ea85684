//! Compiles `proto/` with prost. `protox` parses the .proto files in pure Rust, so no `protoc`
//! binary is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/hexpulse/v1/reading.proto",
        "proto/hexpulse/v1/ingest.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
