//! The request fields that constrain the output to a grammar, in every spelling
//! clients use, → [`StructuredOutput`]:
//!
//! - OpenAI's `response_format`: `{"type": "text"}` (no constraint),
//!   `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"name",
//!   "schema", "strict"}}`;
//! - vLLM's `structured_outputs` object: exactly one of `json` (a schema, as an
//!   object or as JSON text), `regex`, `choice`, `grammar` (Lark) and
//!   `json_object: true`, with the flags `disable_additional_properties` (the
//!   schema's `strict`) and `disable_fallback` (accepted: there is one backend);
//! - vLLM's older top-level `guided_json`, `guided_regex`, `guided_choice`,
//!   `guided_grammar` (`guided_decoding_backend` is accepted and ignored).
//!
//! One request holds at most one constraint: two (say `response_format` json
//! and `guided_regex`) are refused, naming both. Whether a schema, regex or
//! grammar compiles is the engine's call (it refuses the request, a 400); here
//! only the shapes are checked. `nanovllm generate --input` reads the
//! `structured_outputs` object with [`from_structured_outputs`], so a JSONL
//! line and a request body spell it alike.

use nanovllm_core::StructuredOutput;
use serde_json::{Map, Value as Json};

use super::errors::ApiError;
use super::openai_types::SamplingFields;

/// The keys of vLLM's `structured_outputs` object that this server reads.
const STRUCTURED_OUTPUTS_KEYS: &[&str] = &[
    "json",
    "regex",
    "choice",
    "grammar",
    "json_object",
    "disable_additional_properties",
    "disable_fallback",
    "disable_any_whitespace",
    "whitespace_pattern",
];

/// The request's constraint, from whichever field gives it; `None` when none does.
pub fn from_fields(fields: &SamplingFields) -> Result<Option<StructuredOutput>, ApiError> {
    if let Some(pattern) = &fields.guided_whitespace_pattern {
        return Err(ApiError::invalid(
            "guided_whitespace_pattern",
            format!(
                "guided_whitespace_pattern {pattern:?} is not supported: the JSON grammar \
                 bounds whitespace itself; leave it out"
            ),
        ));
    }
    let mut found: Vec<(&'static str, StructuredOutput)> = Vec::new();
    if let Some(format) = &fields.response_format {
        if let Some(c) = from_response_format(format)? {
            found.push(("response_format", c));
        }
    }
    if let Some(object) = &fields.structured_outputs {
        found.push(("structured_outputs", from_structured_outputs(object)?));
    }
    if let Some(schema) = &fields.guided_json {
        found.push(("guided_json", json_schema("guided_json", schema, false)?));
    }
    if let Some(regex) = &fields.guided_regex {
        found.push(("guided_regex", regex_of("guided_regex", regex)?));
    }
    if let Some(choice) = &fields.guided_choice {
        found.push(("guided_choice", choice_of("guided_choice", choice)?));
    }
    if let Some(grammar) = &fields.guided_grammar {
        found.push(("guided_grammar", grammar_of("guided_grammar", grammar)?));
    }
    match found.len() {
        0 | 1 => Ok(found.pop().map(|(_, c)| c)),
        _ => Err(ApiError::invalid(
            found[1].0,
            format!(
                "only one structured-output constraint per request: `{}` and `{}` are both set; \
                 keep one",
                found[0].0, found[1].0
            ),
        )),
    }
}

/// OpenAI's `response_format`; `None` for `{"type": "text"}`.
pub fn from_response_format(format: &Json) -> Result<Option<StructuredOutput>, ApiError> {
    const PARAM: &str = "response_format";
    let object = as_object(PARAM, format)?;
    let kind = object.get("type").and_then(Json::as_str).ok_or_else(|| {
        ApiError::invalid(
            PARAM,
            format!(
                "response_format needs a `type`: \"text\", \"json_object\" or \"json_schema\"; \
                 got {format}"
            ),
        )
    })?;
    let allow_only = |keys: &[&str]| match object.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid(
            format!("{PARAM}.{unknown}"),
            format!(
                "unknown field `{unknown}` in a response_format of type {kind:?}: it holds {}",
                keys.join(", ")
            ),
        )),
        None => Ok(()),
    };
    match kind {
        "text" => {
            allow_only(&["type"])?;
            Ok(None)
        }
        "json_object" => {
            allow_only(&["type"])?;
            Ok(Some(StructuredOutput::JsonObject))
        }
        "json_schema" => {
            allow_only(&["type", "json_schema"])?;
            const INNER: &str = "response_format.json_schema";
            let spec = object.get("json_schema").ok_or_else(|| {
                ApiError::invalid(
                    INNER,
                    "a response_format of type \"json_schema\" needs `json_schema`: \
                     {\"name\": ..., \"schema\": {...}, \"strict\": true}",
                )
            })?;
            let spec = as_object(INNER, spec)?;
            if let Some(unknown) = spec
                .keys()
                .find(|k| !["name", "description", "schema", "strict"].contains(&k.as_str()))
            {
                return Err(ApiError::invalid(
                    format!("{INNER}.{unknown}"),
                    format!(
                        "unknown field `{unknown}` in json_schema: it holds name, description, \
                         schema, strict"
                    ),
                ));
            }
            let strict = match spec.get("strict") {
                None | Some(Json::Null) => false,
                Some(Json::Bool(b)) => *b,
                Some(other) => {
                    return Err(ApiError::invalid(
                        format!("{INNER}.strict"),
                        format!("strict must be true or false, got {other}"),
                    ))
                }
            };
            let schema = spec.get("schema").ok_or_else(|| {
                ApiError::invalid(
                    format!("{INNER}.schema"),
                    "json_schema needs `schema`, the JSON Schema the output must match",
                )
            })?;
            json_schema(&format!("{INNER}.schema"), schema, strict).map(Some)
        }
        other => Err(ApiError::invalid(
            format!("{PARAM}.type"),
            format!(
                "response_format type {other:?} is not supported: use \"text\", \
                 \"json_object\" or \"json_schema\""
            ),
        )),
    }
}

/// vLLM's `structured_outputs` object: exactly one constraint.
pub fn from_structured_outputs(object: &Json) -> Result<StructuredOutput, ApiError> {
    const PARAM: &str = "structured_outputs";
    let fields = as_object(PARAM, object)?;
    if let Some(unknown) = fields
        .keys()
        .find(|k| !STRUCTURED_OUTPUTS_KEYS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("{PARAM}.{unknown}"),
            format!(
                "unknown field `{unknown}` in structured_outputs: it holds {}",
                STRUCTURED_OUTPUTS_KEYS.join(", ")
            ),
        ));
    }
    let flag = |key: &str| -> Result<bool, ApiError> {
        match fields.get(key) {
            None | Some(Json::Null) => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::invalid(
                format!("{PARAM}.{key}"),
                format!("{key} must be true or false, got {other}"),
            )),
        }
    };
    if flag("disable_any_whitespace")? {
        return Err(ApiError::invalid(
            format!("{PARAM}.disable_any_whitespace"),
            "disable_any_whitespace is not supported: the JSON grammar bounds whitespace \
             itself; leave it out",
        ));
    }
    if fields
        .get("whitespace_pattern")
        .is_some_and(|p| !p.is_null())
    {
        return Err(ApiError::invalid(
            format!("{PARAM}.whitespace_pattern"),
            "whitespace_pattern is not supported: the JSON grammar bounds whitespace itself; \
             leave it out",
        ));
    }
    // Only one backend, so there is nothing to fall back to.
    flag("disable_fallback")?;
    let strict = flag("disable_additional_properties")?;
    let mut found: Vec<(&str, StructuredOutput)> = Vec::new();
    let present = |key: &str| fields.get(key).filter(|v| !v.is_null());
    if let Some(schema) = present("json") {
        found.push((
            "json",
            json_schema(&format!("{PARAM}.json"), schema, strict)?,
        ));
    }
    if let Some(regex) = present("regex") {
        found.push(("regex", regex_of(&format!("{PARAM}.regex"), regex)?));
    }
    if let Some(choice) = present("choice") {
        found.push(("choice", choice_of(&format!("{PARAM}.choice"), choice)?));
    }
    if let Some(grammar) = present("grammar") {
        found.push(("grammar", grammar_of(&format!("{PARAM}.grammar"), grammar)?));
    }
    if flag("json_object")? {
        found.push(("json_object", StructuredOutput::JsonObject));
    }
    match found.len() {
        1 => Ok(found.remove(0).1),
        0 => Err(ApiError::invalid(
            PARAM,
            "structured_outputs needs one constraint: json, regex, choice, grammar or \
             json_object: true",
        )),
        _ => Err(ApiError::invalid(
            PARAM,
            format!(
                "structured_outputs holds one constraint, got {}: keep one",
                found
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

fn as_object<'a>(param: &str, value: &'a Json) -> Result<&'a Map<String, Json>, ApiError> {
    value.as_object().ok_or_else(|| {
        ApiError::invalid(param, format!("{param} must be a JSON object, got {value}"))
    })
}

/// A JSON Schema given as an object (or `true`/`false`), or as the JSON text of one.
fn json_schema(param: &str, schema: &Json, strict: bool) -> Result<StructuredOutput, ApiError> {
    let parsed;
    let schema = match schema {
        Json::String(text) => {
            parsed = serde_json::from_str::<Json>(text).map_err(|e| {
                ApiError::invalid(
                    param,
                    format!("{param} is a string but not the JSON text of a schema: {e}"),
                )
            })?;
            &parsed
        }
        other => other,
    };
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ApiError::invalid(
            param,
            format!("{param} must be a JSON Schema (an object), got {schema}"),
        ));
    }
    Ok(StructuredOutput::JsonSchema {
        schema: schema.to_string(),
        strict,
    })
}

fn non_empty_string(param: &str, value: &Json, what: &str) -> Result<String, ApiError> {
    match value {
        Json::String(s) if !s.is_empty() => Ok(s.clone()),
        other => Err(ApiError::invalid(
            param,
            format!("{param} must be a non-empty string ({what}), got {other}"),
        )),
    }
}

fn regex_of(param: &str, value: &Json) -> Result<StructuredOutput, ApiError> {
    non_empty_string(param, value, "a regular expression").map(StructuredOutput::Regex)
}

fn grammar_of(param: &str, value: &Json) -> Result<StructuredOutput, ApiError> {
    non_empty_string(param, value, "a Lark grammar").map(StructuredOutput::Lark)
}

fn choice_of(param: &str, value: &Json) -> Result<StructuredOutput, ApiError> {
    let bad = || {
        ApiError::invalid(
            param,
            format!("{param} must be a non-empty list of strings, got {value}"),
        )
    };
    let items = value.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
    items
        .iter()
        .map(|item| item.as_str().map(str::to_string).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()
        .map(StructuredOutput::Choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Json) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    fn constraint(v: Json) -> Option<StructuredOutput> {
        from_fields(&fields(v.clone())).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn refusal(v: Json) -> (String, String) {
        match from_fields(&fields(v.clone())) {
            Err(ApiError::InvalidField { param, message }) => (param.unwrap_or_default(), message),
            other => panic!("{v}: expected a refusal, got {other:?}"),
        }
    }

    fn schema(text: &str, strict: bool) -> Option<StructuredOutput> {
        Some(StructuredOutput::JsonSchema {
            schema: text.into(),
            strict,
        })
    }

    #[test]
    fn response_format_types() {
        assert_eq!(constraint(json!({})), None);
        assert_eq!(
            constraint(json!({"response_format": {"type": "text"}})),
            None
        );
        assert_eq!(
            constraint(json!({"response_format": {"type": "json_object"}})),
            Some(StructuredOutput::JsonObject)
        );
        assert_eq!(
            constraint(
                json!({"response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "integer"}, "strict": true}}})
            ),
            schema(r#"{"type":"integer"}"#, true)
        );
        // strict defaults to false, as OpenAI's does.
        assert_eq!(
            constraint(json!({"response_format": {"type": "json_schema",
                "json_schema": {"schema": {"type": "string"}}}})),
            schema(r#"{"type":"string"}"#, false)
        );
        // `text` with a vLLM constraint is one constraint.
        assert_eq!(
            constraint(json!({"response_format": {"type": "text"}, "guided_regex": "a+"})),
            Some(StructuredOutput::Regex("a+".into()))
        );
    }

    #[test]
    fn vllm_spellings() {
        assert_eq!(
            constraint(json!({"structured_outputs": {"json": {"type": "boolean"}}})),
            schema(r#"{"type":"boolean"}"#, false)
        );
        assert_eq!(
            constraint(
                json!({"structured_outputs": {"json": "{\"type\": \"null\"}",
                "disable_additional_properties": true, "disable_fallback": true}})
            ),
            schema(r#"{"type":"null"}"#, true)
        );
        assert_eq!(
            constraint(json!({"structured_outputs": {"regex": "[0-9]+"}})),
            Some(StructuredOutput::Regex("[0-9]+".into()))
        );
        assert_eq!(
            constraint(json!({"structured_outputs": {"choice": ["a", "b"]}})),
            Some(StructuredOutput::Choice(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            constraint(json!({"structured_outputs": {"grammar": "start: \"x\""}})),
            Some(StructuredOutput::Lark("start: \"x\"".into()))
        );
        assert_eq!(
            constraint(json!({"structured_outputs": {"json_object": true, "regex": null}})),
            Some(StructuredOutput::JsonObject)
        );
        assert_eq!(
            constraint(
                json!({"guided_json": {"type": "object"}, "guided_decoding_backend": "xgrammar"})
            ),
            schema(r#"{"type":"object"}"#, false)
        );
        assert_eq!(
            constraint(json!({"guided_regex": "b"})),
            Some(StructuredOutput::Regex("b".into()))
        );
        assert_eq!(
            constraint(json!({"guided_choice": ["yes"]})),
            Some(StructuredOutput::Choice(vec!["yes".into()]))
        );
        assert_eq!(
            constraint(json!({"guided_grammar": "start: \"y\""})),
            Some(StructuredOutput::Lark("start: \"y\"".into()))
        );
    }

    #[test]
    fn bad_shapes_are_named() {
        for (body, param, says) in [
            (
                json!({"response_format": "json"}),
                "response_format",
                "JSON object",
            ),
            (
                json!({"response_format": {}}),
                "response_format",
                "needs a `type`",
            ),
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format.type",
                "yaml",
            ),
            (
                json!({"response_format": {"type": "text", "x": 1}}),
                "response_format.x",
                "unknown field",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
                "needs `json_schema`",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}),
                "response_format.json_schema.schema",
                "needs `schema`",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
                "response_format.json_schema.schema",
                "JSON Schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}}),
                "response_format.json_schema.strict",
                "true or false",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "extra": 1}}}),
                "response_format.json_schema.extra",
                "unknown field",
            ),
            (
                json!({"structured_outputs": {}}),
                "structured_outputs",
                "needs one constraint",
            ),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
                "structured_outputs",
                "regex and choice",
            ),
            (
                json!({"structured_outputs": {"regexp": "a"}}),
                "structured_outputs.regexp",
                "unknown field",
            ),
            (
                json!({"structured_outputs": {"json": "{not json"}}),
                "structured_outputs.json",
                "not the JSON text",
            ),
            (
                json!({"structured_outputs": {"choice": []}}),
                "structured_outputs.choice",
                "non-empty list",
            ),
            (
                json!({"structured_outputs": {"choice": ["a", 1]}}),
                "structured_outputs.choice",
                "non-empty list",
            ),
            (
                json!({"structured_outputs": {"regex": ""}}),
                "structured_outputs.regex",
                "non-empty string",
            ),
            (
                json!({"structured_outputs": {"json_object": "yes"}}),
                "structured_outputs.json_object",
                "true or false",
            ),
            (
                json!({"structured_outputs": {"json_object": true, "disable_any_whitespace": true}}),
                "structured_outputs.disable_any_whitespace",
                "not supported",
            ),
            (
                json!({"structured_outputs": {"json_object": true, "whitespace_pattern": " "}}),
                "structured_outputs.whitespace_pattern",
                "not supported",
            ),
            (
                json!({"guided_whitespace_pattern": "\\s*"}),
                "guided_whitespace_pattern",
                "not supported",
            ),
            (
                json!({"guided_grammar": 5}),
                "guided_grammar",
                "Lark grammar",
            ),
            (
                json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
                "guided_regex",
                "`response_format` and `guided_regex`",
            ),
            (
                json!({"structured_outputs": {"regex": "a"}, "guided_choice": ["a"]}),
                "guided_choice",
                "only one structured-output constraint",
            ),
        ] {
            let (p, message) = refusal(body.clone());
            assert_eq!(p, param, "{body}: {message}");
            assert!(message.contains(says), "{body}: {message}");
        }
    }
}
