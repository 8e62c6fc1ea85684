//! Compiles `proto/` with prost. `protox` parses the .proto files in pure Rust, so no `protoc`
//! binary is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/hexpulse/v1/reading.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
