//! The API's one error type and its JSON body.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use squall_actors::EngineError;

/// Everything a handler can answer besides success; each variant maps to
/// one status code and a `{"faultstring": ...}` body.
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
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// 429 with `Retry-After: retry_after` (seconds).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A 503 is transient (the index loading, the bus away) and the
        // client is told to retry: a warning, not an error to page on.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "request refused for now");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = Json(json!({"faultstring": self.to_string()}));
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            let retry = [(axum::http::header::RETRY_AFTER, retry_after.to_string())];
            return (status, retry, body).into_response();
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is "try again shortly".
            return (status, [(axum::http::header::RETRY_AFTER, "2")], body).into_response();
        }
        (status, body).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnknownAction(_) => ApiError::NotFound(e.to_string()),
            EngineError::NotRunnable(_)
            | EngineError::Params(_)
            | EngineError::Pack(_)
            | EngineError::PackConfig(_)
            | EngineError::Virtualenv(_) => ApiError::BadRequest(e.to_string()),
            EngineError::Bus { .. } => ApiError::Unavailable(format!(
                "the message bus is unavailable, try again shortly ({e})"
            )),
            EngineError::Corrupt { .. } | EngineError::Config(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
                "request body is larger than the {} byte limit",
                super::MAX_BODY_BYTES
            )),
            _ => ApiError::BadRequest(format!("invalid JSON body: {}", r.body_text())),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
                "request body is larger than the {} byte limit",
                super::MAX_BODY_BYTES
            )),
            _ => ApiError::BadRequest(format!("cannot read the request body: {}", r.body_text())),
        }
    }
}

/// `Json` whose rejections answer in the API's error format.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query: {}", r.body_text()))
    }
}

/// `Query` whose rejections answer in the API's error format.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
