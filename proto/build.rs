//! Compiles the .proto files with a vendored `protoc`, so no system protoc is
//! needed, and writes the file descriptor set that gRPC reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("booking_descriptor.bin"))
        .compile_protos(
            &[
                "proto/booking/v1/booking.proto",
                "proto/booking/v1/participant.proto",
                "proto/booking/v1/log.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
