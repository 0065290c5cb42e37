//! [`ApiError`]: every way a request can fail, rendered in OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
//!
//! 4xx errors are the client's (`type: "invalid_request_error"`), 5xx the
//! server's (`type: "server_error"`). Messages say what is wrong and what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON body: {detail}")]
    MalformedJson { detail: String },
    /// A field is missing, of the wrong type or out of range; `param` names it.
    #[error("{message}")]
    InvalidField {
        param: Option<String>,
        message: String,
    },
    /// The prompt (plus the tokens asked for) does not fit the model's context.
    #[error("{message}")]
    PromptTooLong { message: String },
    #[error("missing or invalid API key: send the header `Authorization: Bearer <key>` with the key the server was started with (--api-key)")]
    Unauthorized,
    #[error("the model `{requested}` does not exist: this server serves `{served}` (see GET /v1/models)")]
    ModelNotFound { requested: String, served: String },
    #[error("no route for {method} {path}: see the README for the endpoints (/v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /version, /health, /metrics)")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body too large: the limit is {limit} bytes (raise it with --max-body-bytes)")]
    PayloadTooLarge { limit: usize },
    /// The waiting queue is full: retry later.
    #[error("the server is overloaded: {num_waiting} requests are already waiting (limit {limit}, --max-waiting-requests); retry later")]
    Overloaded { num_waiting: usize, limit: usize },
    /// The engine thread is gone (shutting down, or it failed).
    #[error("the engine is not running: {reason}")]
    EngineUnavailable { reason: String },
    /// The engine failed while running the request.
    #[error("generation failed: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson { .. }
            | ApiError::InvalidField { .. }
            | ApiError::PromptTooLong { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } | ApiError::EngineUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `code` field.
    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::PromptTooLong { .. } => Some("context_length_exceeded"),
            ApiError::Unauthorized => Some("invalid_api_key"),
            ApiError::ModelNotFound { .. } => Some("model_not_found"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::Overloaded { .. } => Some("server_overloaded"),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidField { param, .. } => param.as_deref(),
            ApiError::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    /// The `{"error": {...}}` body.
    pub fn body(&self) -> serde_json::Value {
        let kind = if self.status().is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        json!({"error": {
            "message": self.to_string(),
            "type": kind,
            "param": self.param(),
            "code": self.code(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Overloaded { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_shape() {
        let e = ApiError::invalid("temperature", "temperature must be in [0, 2], got 9");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": {"message": "temperature must be in [0, 2], got 9",
                   "type": "invalid_request_error", "param": "temperature", "code": null}})
        );
        let e = ApiError::Overloaded {
            num_waiting: 3,
            limit: 3,
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body()["error"]["type"], "server_error");
        assert_eq!(e.body()["error"]["code"], "server_overloaded");
        assert_eq!(ApiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
