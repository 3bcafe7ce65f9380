//! Transport settings shared by every client and server: large HTTP/2 windows and frames and a
//! raised message limit, so that multi-MiB gradient pieces flow without stalls or cliffs.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// Largest gRPC message accepted or sent (a piece of a collective is at most a few MiB).
pub const MAX_MESSAGE: usize = 64 << 20;
/// HTTP/2 stream flow-control window.
const STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 connection flow-control window.
const CONN_WINDOW: u32 = 64 << 20;

/// A client endpoint for `uri` with batchlab's transport settings.
pub fn endpoint(uri: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_string())?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// What a server's responses go through: [`count_oversized`].
type Counted = tower::layer::util::Stack<
    tower::util::MapResponseLayer<fn(GrpcResponse) -> GrpcResponse>,
    tower::layer::util::Identity,
>;
type GrpcResponse = http::Response<tonic::body::Body>;

/// A server builder with batchlab's transport settings; a call gRPC itself refuses for a
/// message above [`MAX_MESSAGE`] is counted with the other refusals.
pub fn server() -> Server<Counted> {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true)
        .layer(tower::util::MapResponseLayer::new(
            count_oversized as fn(GrpcResponse) -> GrpcResponse,
        ))
}

/// Counts (and logs) a response that refuses a request whose message was too large: tonic
/// answers those itself, OUT_OF_RANGE with "message length too large", before any handler
/// sees them.
fn count_oversized(response: GrpcResponse) -> GrpcResponse {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    // Every response passes here: only an OUT_OF_RANGE one is looked at further (its message
    // is percent-encoded).
    if header("grpc-status") == "11" {
        let why = header("grpc-message").replace("%20", " ");
        if why.contains("too large") {
            crate::refused::refuse(
                crate::refused::Reason::Oversized,
                "a gRPC client",
                format!("a call was refused: {why}"),
            );
        }
    }
    response
}
