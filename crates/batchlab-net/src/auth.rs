//! Every RPC carries the run's token and the protocol version as metadata; both are checked
//! (the token in constant time) before a handler runs, so a refused call changes no state.

use crate::protocol::PROTOCOL_VERSION;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::refused::{Reason, Refusal};

/// Metadata key of the token.
pub const TOKEN_KEY: &str = "x-batchlab-token";
/// Metadata key of the protocol version.
pub const PROTOCOL_KEY: &str = "x-batchlab-protocol";

/// Server side: refuses calls without the right token or protocol version.
#[derive(Clone)]
pub struct Check {
    token: std::sync::Arc<str>,
    what: &'static str,
}

impl Check {
    /// A check for `token`; `what` names the service in messages (`coordinator`, `worker`).
    pub fn new(token: &str, what: &'static str) -> Self {
        Self {
            token: token.into(),
            what,
        }
    }
}

impl tonic::service::Interceptor for Check {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let md = req.metadata();
        let from = req
            .remote_addr()
            .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        let version = md
            .get(PROTOCOL_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        if version != PROTOCOL_VERSION.to_string() {
            return Err(Status::from(Refusal::counted(
                Reason::Version,
                &from,
                format!(
                    "{} speaks batchlab protocol {PROTOCOL_VERSION}; the caller at {from} sent version {version}",
                    self.what
                ),
            )));
        }
        let given = md.get(TOKEN_KEY).map(|v| v.as_bytes()).unwrap_or_default();
        if !constant_time_eq::constant_time_eq(given, self.token.as_bytes()) {
            return Err(Status::from(Refusal::counted(
                Reason::Token,
                &from,
                format!(
                    "{} refused the caller at {from}: wrong or missing token (set the same --token on every process)",
                    self.what
                ),
            )));
        }
        Ok(req)
    }
}

/// Client side: adds the token and protocol version to every call.
#[derive(Clone)]
pub struct Stamp {
    token: MetadataValue<tonic::metadata::Ascii>,
    version: MetadataValue<tonic::metadata::Ascii>,
}

impl Stamp {
    /// A stamp for `token`. Fails when the token is not printable ASCII.
    pub fn new(token: &str) -> Result<Self, crate::NetError> {
        let token = token.parse().map_err(|_| {
            crate::NetError::Config("the token must be printable ASCII without spaces".to_string())
        })?;
        let version = PROTOCOL_VERSION
            .to_string()
            .parse()
            .expect("digits are ASCII");
        Ok(Self { token, version })
    }
}

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(TOKEN_KEY, self.token.clone());
        req.metadata_mut()
            .insert(PROTOCOL_KEY, self.version.clone());
        Ok(req)
    }
}
