//! Reading a JSON request body into a typed request, with OpenAI-style errors:
//! 413 past the body limit, 400 for malformed JSON, 400 naming the field for
//! an unknown field or a value of the wrong type.
//!
//! The body is read as bytes whatever its `Content-Type` (curl's `-d` sends
//! form-encoded headers with JSON inside).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use super::errors::ApiError;

/// Reads `body` as a JSON object holding only top-level fields listed in `known` (the
/// endpoint's own list, and the shared ones it reads too).
pub fn parse_object(
    body: Result<Bytes, BytesRejection>,
    known: &[&[&str]],
    max_body_bytes: usize,
) -> Result<Json, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: max_body_bytes,
            }
        } else {
            ApiError::MalformedJson {
                detail: rejection.body_text(),
            }
        }
    })?;
    let value: Json = serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson {
        detail: e.to_string(),
    })?;
    let Json::Object(fields) = &value else {
        return Err(ApiError::InvalidField {
            param: None,
            message: format!("the request body must be a JSON object, got {value}"),
        });
    };
    let is_known = |k: &str| known.iter().any(|list| list.contains(&k));
    if let Some(unknown) = fields.keys().find(|k| !is_known(k)) {
        return Err(ApiError::invalid(
            unknown.clone(),
            format!(
                "unknown field `{unknown}`: this endpoint accepts {}",
                known.concat().join(", ")
            ),
        ));
    }
    Ok(value)
}

/// The fields of `T` in `body` (other fields are left to other structs).
pub fn typed<T: DeserializeOwned>(body: &Json) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::InvalidField {
                param: None,
                message: inner,
            }
        } else {
            ApiError::invalid(path.clone(), format!("invalid `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::openai_types::{
        CompletionRequest, SamplingFields, COMPLETION_FIELDS, SAMPLING_FIELDS,
    };

    fn parse_completion(body: &str) -> Result<(CompletionRequest, SamplingFields), ApiError> {
        let value = parse_object(
            Ok(Bytes::from(body.to_string())),
            &[COMPLETION_FIELDS, SAMPLING_FIELDS],
            100,
        )?;
        Ok((typed(&value)?, typed(&value)?))
    }

    fn param(e: ApiError) -> Option<String> {
        match e {
            ApiError::InvalidField { param, .. } => param,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_body_parses() {
        let (r, s) =
            parse_completion(r#"{"prompt": "hi", "temperature": 0.5, "max_tokens": 3}"#).unwrap();
        assert_eq!(r.prompt, Json::String("hi".into()));
        assert_eq!(r.max_tokens, Some(3));
        assert_eq!(s.temperature, Some(0.5));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(matches!(
            parse_completion("{not json"),
            Err(ApiError::MalformedJson { .. })
        ));
        let e = parse_completion(r#"{"prompt": "hi", "temprature": 1}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("temprature"));
        // A wrong type among the shared sampling fields.
        let e = parse_completion(r#"{"prompt": "hi", "temperature": "hot"}"#).unwrap_err();
        let msg = e.to_string();
        assert_eq!(param(e).as_deref(), Some("temperature"), "{msg}");
        let e = parse_completion(r#"{"prompt": "hi", "max_tokens": -1}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("max_tokens"));
        let e = parse_completion(r#"{"max_tokens": 1}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `prompt`"), "{e}");
        let e = parse_completion(r#"{"prompt": "hi", "suffix": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("accepts model, prompt"), "{e}");
        assert_eq!(param(e).as_deref(), Some("suffix"));
        // A wrong type inside a map names the key.
        let e = parse_completion(r#"{"prompt": "hi", "logit_bias": {"5": "up"}}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("logit_bias.5"));
        let e = parse_completion("[1]").unwrap_err();
        assert!(e.to_string().contains("JSON object"), "{e}");
    }
}
