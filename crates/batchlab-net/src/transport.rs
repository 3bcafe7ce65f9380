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

/// A server builder with batchlab's transport settings.
pub fn server() -> Server {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true)
}
