//! The wire contract shared by every process: the generated gRPC types of
//! `proto/booking/v1/*.proto`, the decision-log record type, the stable
//! routing function (flight → partition) and the limits and validation
//! rules that both the coordinator and the participants enforce; and the
//! process set-up every binary shares (`logging`, `process`).
//!
//! Apart from that set-up, this crate does no I/O.

pub mod limits;
pub mod logging;
pub mod process;
pub mod routing;
pub mod validate;

/// Generated code, nested as the protobuf packages are.
pub mod booking {
    /// Package `booking.v1`: the public and participant contracts.
    pub mod v1 {
        tonic::include_proto!("booking.v1");
    }
    /// Package `booking.log.v1`: the decision-log record payload.
    pub mod log {
        pub mod v1 {
            tonic::include_proto!("booking.log.v1");
        }
    }
}

pub use booking::log::v1 as log_v1;
pub use booking::v1;

/// The encoded file descriptor set of every .proto file, served by gRPC
/// reflection so that grpcurl works without the .proto files at hand.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("booking_descriptor");
