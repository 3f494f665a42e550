//! The one typed error of the HTTP edge. Every domain error is mapped to a
//! status here and rendered as Daytona's error body; nowhere else decides
//! status codes.

use atoll_types::error_body::{generic_code, SOURCE_API};
use atoll_types::ErrorBody;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 with `Retry-After: retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn sandbox_not_found(id_or_name: &str) -> ApiError {
        ApiError::NotFound(format!("Sandbox with ID or name {id_or_name} not found"))
    }
}

impl From<crate::quota::QuotaExceeded> for ApiError {
    fn from(e: crate::quota::QuotaExceeded) -> ApiError {
        ApiError::Forbidden(e.to_string())
    }
}

impl From<crate::ratelimit::Limited> for ApiError {
    fn from(l: crate::ratelimit::Limited) -> ApiError {
        ApiError::TooManyRequests {
            message: format!(
                "Too Many Requests: this API key may send {} requests a minute to the API (bursts of {}); retry in {} s",
                l.limit.per_minute, l.limit.burst, l.retry_after_secs
            ),
            retry_after_secs: l.retry_after_secs,
        }
    }
}

/// Runtime errors, by kind: the one place they become statuses.
impl From<atoll_runtime_api::RuntimeError> for ApiError {
    fn from(e: atoll_runtime_api::RuntimeError) -> ApiError {
        use atoll_runtime_api::RuntimeError as R;
        match e {
            R::InvalidId(_) | R::Unsupported(_) | R::BadPath(_) => {
                ApiError::BadRequest(e.to_string())
            }
            R::ImageNotFound(_) | R::PathNotFound(_) => ApiError::NotFound(e.to_string()),
            R::NotRunning { .. } => ApiError::Conflict(e.to_string()),
            R::NoSpace(why) => {
                ApiError::InsufficientStorage(format!("not enough disk space on the server: {why}"))
            }
            R::NetworkFull(_) | R::Unreachable(_) => ApiError::Unavailable(e.to_string()),
            R::Connect(_) => ApiError::BadGateway(e.to_string()),
            R::Failed(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<atoll_store::StoreError> for ApiError {
    fn from(e: atoll_store::StoreError) -> ApiError {
        match e {
            atoll_store::StoreError::Conflict(m) => ApiError::Conflict(m),
            other if other.is_disk_full() => {
                tracing::warn!(error = %other, "database write failed: disk full");
                ApiError::InsufficientStorage(
                    "the server's disk is full; free space and retry (nothing was changed)".into(),
                )
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::Internal("internal storage error".into())
            }
        }
    }
}

/// Request method and path, filled in by a middleware so error bodies can
/// name them.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
}

tokio::task_local! {
    pub static REQUEST_INFO: RequestInfo;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let info = REQUEST_INFO.try_with(|i| i.clone()).unwrap_or_default();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), path = %info.path, error = %self, "request failed");
        }
        // Runtime messages carry no host path (the runtime scrubs them).
        let message = self.to_string();
        let body = ErrorBody::new(
            status.as_u16(),
            generic_code(status.as_u16()),
            message,
            &info.method,
            &info.path,
            SOURCE_API,
        );
        let mut resp = (status, body.to_json()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
