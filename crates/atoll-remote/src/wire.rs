//! The runner protocol's error body: a runtime error crosses as its kind
//! and message (`{"kind": "noSpace", "message": "…"}`) and becomes the same
//! `RuntimeError` on the other side.

use atoll_runtime_api::RuntimeError;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Every route of the runner API is under this prefix.
pub const PREFIX: &str = "/v1";
/// The `Upgrade` token of stream routes (toolbox, ports).
pub const STREAM_UPGRADE: &str = "atoll-stream";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub kind: String,
    pub message: String,
}

/// The status and body a runtime error is sent as.
pub fn encode(e: &RuntimeError) -> (StatusCode, ErrorBody) {
    let (status, kind, message) = match e {
        RuntimeError::InvalidId(id) => (StatusCode::BAD_REQUEST, "invalidId", id.clone()),
        RuntimeError::ImageNotFound(name) => (StatusCode::NOT_FOUND, "imageNotFound", name.clone()),
        RuntimeError::NotRunning { id } => (StatusCode::CONFLICT, "notRunning", id.clone()),
        RuntimeError::NoSpace(m) => (StatusCode::INSUFFICIENT_STORAGE, "noSpace", m.clone()),
        RuntimeError::NetworkFull(m) => (StatusCode::SERVICE_UNAVAILABLE, "networkFull", m.clone()),
        RuntimeError::Unsupported(w) => (StatusCode::NOT_IMPLEMENTED, "unsupported", w.to_string()),
        RuntimeError::Unreachable(m) => (StatusCode::BAD_GATEWAY, "unreachable", m.clone()),
        RuntimeError::Connect(e) => (StatusCode::BAD_GATEWAY, "connect", e.to_string()),
        RuntimeError::PathNotFound(m) => (StatusCode::NOT_FOUND, "pathNotFound", m.clone()),
        RuntimeError::BadPath(m) => (StatusCode::BAD_REQUEST, "badPath", m.clone()),
        RuntimeError::Failed(m) => (StatusCode::INTERNAL_SERVER_ERROR, "failed", m.clone()),
    };
    (
        status,
        ErrorBody {
            kind: kind.into(),
            message,
        },
    )
}

/// The runtime error a body says (an unknown kind is a failure).
pub fn decode(b: ErrorBody) -> RuntimeError {
    match b.kind.as_str() {
        "invalidId" => RuntimeError::InvalidId(b.message),
        "imageNotFound" => RuntimeError::ImageNotFound(b.message),
        "notRunning" => RuntimeError::NotRunning { id: b.message },
        "noSpace" => RuntimeError::NoSpace(b.message),
        "pathNotFound" => RuntimeError::PathNotFound(b.message),
        "badPath" => RuntimeError::BadPath(b.message),
        "networkFull" => RuntimeError::NetworkFull(b.message),
        "unsupported" => RuntimeError::Failed(format!("the runner cannot {}", b.message)),
        "unreachable" => RuntimeError::Unreachable(b.message),
        "connect" => RuntimeError::Connect(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            b.message,
        )),
        _ => RuntimeError::Failed(b.message),
    }
}

/// One line of a streamed answer (a pull, a commit): progress lines, then
/// the outcome. Lines are JSON (`{"log": "…"}`, `{"image": {…}}`,
/// `{"error": {…}}`); an empty line is a keep-alive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StreamEvent {
    Log(String),
    Image(atoll_runtime_api::ImageInfo),
    Error(ErrorBody),
}

impl StreamEvent {
    /// The event as one line.
    pub fn line(&self) -> bytes::Bytes {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        bytes::Bytes::from(v)
    }
}
