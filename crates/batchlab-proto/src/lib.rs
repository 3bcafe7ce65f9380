//! The batchlab wire protocol, package `batchlab.v1`, generated from
//! `proto/batchlab/v1/batchlab.proto` at build time. Only generated code lives here.

/// Version 1 of the protocol.
pub mod v1 {
    #![allow(missing_docs)] // generated code; the .proto file carries the documentation
    #![allow(clippy::all)] // generated code
    tonic::include_proto!("batchlab.v1");
}

/// The protocol version every RPC announces in the `x-batchlab-protocol` metadata entry.
/// Version 3 added the all-reduce benchmark task; version 5 made the run's configuration CBOR
/// and the algorithm, reduction and transport enums.
pub const PROTOCOL_VERSION: u32 = 5;
