//! The one place errors become HTTP statuses and the JSON error body
//! `{"error":{"code":"...","message":"..."}}` (SPEC §3).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::providers::ProviderError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn unknown_source(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no source named {name:?}"),
        )
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {limit} bytes"),
        )
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin token required: Authorization: Bearer <token>",
        )
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let (status, code) = match &e {
            ProviderError::InvalidPayload(_) => (StatusCode::BAD_REQUEST, "invalid_payload"),
            ProviderError::InvalidSignature(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            ProviderError::VerificationFailed(_) => (StatusCode::FORBIDDEN, "verification_failed"),
            ProviderError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ProviderError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "Store unavailable.");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store could not commit; nothing was acknowledged, retry later",
                )
            }
            StoreError::Backlogged(waiting) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "{waiting} acknowledged messages are waiting for the database \
                     (store.max_backlog); nothing was acknowledged, retry later"
                ),
            ),
            StoreError::NotFound => Self::not_found("resource"),
            StoreError::Internal(cause) => {
                tracing::error!(error = %cause, "Internal store error.");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}
