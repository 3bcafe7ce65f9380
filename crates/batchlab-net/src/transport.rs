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

/// A server builder with batchlab's transport settings, whose every call goes through
/// [`CountRefusalsLayer`].
pub fn server()
-> Server<tower::layer::util::Stack<CountRefusalsLayer, tower::layer::util::Identity>> {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true)
        .layer(CountRefusalsLayer)
}

/// Counts (and logs, naming the caller's address and the method) the calls that gRPC itself
/// refuses before any handler sees their message: a message above [`MAX_MESSAGE`]
/// (OUT_OF_RANGE, "message length too large") is oversized; one that does not decode as its
/// protobuf message, or whose gRPC framing is broken (INTERNAL, with one of tonic's decoding
/// messages: "failed to decode Protobuf message", "Unexpected EOF decoding stream", ...), is
/// malformed. A broken connection (INTERNAL too, "h2 protocol error") is not a refusal.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRefusalsLayer;

impl<S> tower::Layer<S> for CountRefusalsLayer {
    type Service = CountRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRefusals { inner }
    }
}

/// How the messages of tonic's INTERNAL statuses for a request that does not decode begin
/// (a protobuf decoding error, a gRPC frame with a bad flag, a stream ended inside a message, a
/// unary call without its message).
const DECODE_FAILURES: [&str; 5] = [
    "failed to decode Protobuf message",
    "protocol error: received message",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "Error decompressing",
];

/// The service of [`CountRefusalsLayer`].
#[derive(Debug, Clone)]
pub struct CountRefusals<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CountRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let from = caller(&request);
        let method = request.uri().path().to_string();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            count_refused(&response, &from, &method);
            Ok(response)
        })
    }
}

/// The address of the caller of `request`, as the server saw it.
fn caller<B>(request: &http::Request<B>) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
}

/// Counts the response to a call of `method` from `from` if gRPC refused the call's message
/// (see [`CountRefusalsLayer`]).
fn count_refused<R>(response: &http::Response<R>, from: &str, method: &str) {
    use crate::refused::{Reason, refuse};
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    // Every response passes here: only an error status is looked at further. A refused
    // message's status is in the headers (a trailers-only response): the handler never ran,
    // or ran and passed on the error its request stream yielded.
    let reason = match header("grpc-status") {
        "11" => Reason::Oversized,
        "13" => Reason::Malformed,
        _ => return,
    };
    let why = percent_decode(header("grpc-message"));
    let refused = match reason {
        Reason::Oversized => why.contains("too large"),
        _ => DECODE_FAILURES.iter().any(|f| why.starts_with(f)),
    };
    if !refused {
        return;
    }
    refuse(
        reason,
        from,
        format!("a call of {method} from {from} was refused: {why}"),
    );
}

/// Undoes the percent-encoding of a `grpc-message` header.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            super::percent_decode("failed%20to%20decode%3A%20100%25 %zz%4"),
            "failed to decode: 100% %zz%4"
        );
    }
}
