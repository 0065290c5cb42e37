//! The router: OpenAI endpoints under `/v1` and vLLM's `/tokenize` and
//! `/detokenize` (behind the API key when one is set), `/health`, `/metrics`
//! and `/version` (always open, for probes and scrapers), and JSON errors for
//! unknown routes, wrong methods and oversized bodies.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::errors::ApiError;
use super::health::Health;
use super::openai_types::ModelCard;
use super::state::AppState;
use super::{chat_completions, completions, tokenize};

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat_completions::handle))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(get_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/version", get(tokenize::version))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// 404 unless `model` is absent or the served name.
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.model_name => Err(ApiError::ModelNotFound {
            requested: m.to_string(),
            served: state.model_name.clone(),
        }),
        _ => Ok(()),
    }
}

/// `Authorization: Bearer KEY` must match `--api-key` when one is set.
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.limits.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so response timing does not leak the key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn count_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.metrics.count_response(response.status().as_u16());
    response
}

fn model_card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.model_name.clone(),
        object: "model",
        created: state.started_at,
        owned_by: "nanovllm",
        max_model_len: state.max_model_len,
    }
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({"object": "list", "data": [model_card(&state)]})).into_response()
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    check_model(&state, Some(&model))?;
    Ok(Json(model_card(&state)).into_response())
}

/// 200 `{"status": "ok"}` while the engine serves; 503 with why while its tensor-parallel
/// group is broken (`recovering`, `failed`) or once its thread has stopped.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let health = state.engine.health();
    match health {
        Health::Ready if state.engine.is_alive() => Json(health.body()).into_response(),
        Health::Ready => ApiError::EngineUnavailable {
            reason: "the engine thread has stopped; see the server log".into(),
        }
        .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(health.body())).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
