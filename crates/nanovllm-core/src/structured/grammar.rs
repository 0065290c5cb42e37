//! [`StructuredOutput`] → llguidance's [`TopLevelGrammar`] (not yet compiled against a
//! tokenizer: [`super::GrammarCompiler`] does that).
//!
//! Invariants:
//! - JSON (object or schema) is compact: llguidance's JSON options with
//!   `whitespace_flexible: false` and separators `","` / `":"`, so the grammar admits no
//!   whitespace between tokens at all and a model cannot fill `max_tokens` with spaces.
//! - `strict: true` adds `"additionalProperties": false` to every object schema that does
//!   not say otherwise (OpenAI's strict mode: no properties beyond those listed); with
//!   `strict: false` the schema is taken as written (JSON Schema's default allows extra
//!   properties).
//! - A choice is a Lark rule of literal alternatives, each quoted as a JSON string (the
//!   quoting Lark string literals use in llguidance), so any text is matched literally.

use llguidance::api::TopLevelGrammar;
use llguidance::JsonCompileOptions;
use nanovllm_scheduler::StructuredOutput;
use serde_json::{json, Value};

/// The grammar `spec` asks for, or why it is malformed (before tokenizer compilation, which
/// finds the rest). The error names the problem, not the form: the caller adds that.
pub fn top_level_grammar(spec: &StructuredOutput) -> Result<TopLevelGrammar, String> {
    Ok(match spec {
        StructuredOutput::JsonObject => {
            TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
        }
        StructuredOutput::JsonSchema { schema, strict } => {
            let mut schema: Value = serde_json::from_str(schema)
                .map_err(|e| format!("the schema is not valid JSON: {e}"))?;
            match &schema {
                Value::Object(_) => {}
                // `true` is the schema that allows anything: any JSON value.
                Value::Bool(true) => schema = json!({}),
                other => {
                    return Err(format!(
                        "a JSON schema must be an object (or true), got {}",
                        json_kind(other)
                    ))
                }
            }
            if *strict {
                forbid_additional_properties(&mut schema);
            }
            TopLevelGrammar::from_json_schema(compact(schema))
        }
        StructuredOutput::Regex(regex) => TopLevelGrammar::from_regex(regex),
        StructuredOutput::Choice(choices) => {
            if choices.is_empty() {
                return Err("a choice needs at least one alternative".to_string());
            }
            let alternatives: Vec<String> = choices.iter().map(|c| lark_literal(c)).collect();
            TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
        }
        StructuredOutput::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
    })
}

/// `schema` with llguidance's compact JSON options: no whitespace anywhere.
fn compact(mut schema: Value) -> Value {
    let options = JsonCompileOptions {
        whitespace_flexible: false,
        item_separator: ",".to_string(),
        key_separator: ":".to_string(),
        ..JsonCompileOptions::default()
    };
    // `apply_to` needs an object: every caller passes one.
    if schema.is_object() {
        options.apply_to(&mut schema);
    }
    schema
}

/// Sets `"additionalProperties": false` on every object schema in `schema` that has
/// `properties` and no `additionalProperties` of its own, descending into every keyword
/// that holds subschemas.
fn forbid_additional_properties(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".to_string(), Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                descend(key, value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_additional_properties),
        _ => {}
    }
}

/// Recurses into the subschemas that `key`'s value holds (a schema, a list of schemas, or a
/// map of names to schemas), and into nothing else (`enum`, `const`, `default` hold data).
fn descend(key: &str, value: &mut Value) {
    match key {
        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
            if let Value::Object(named) = value {
                named.values_mut().for_each(forbid_additional_properties);
            }
        }
        "items"
        | "prefixItems"
        | "additionalItems"
        | "contains"
        | "not"
        | "if"
        | "then"
        | "else"
        | "allOf"
        | "anyOf"
        | "oneOf"
        | "additionalProperties"
        | "unevaluatedProperties"
        | "unevaluatedItems"
        | "propertyNames" => forbid_additional_properties(value),
        _ => {}
    }
}

/// `text` as a Lark string literal (llguidance reads the quoted part as a JSON string).
fn lark_literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(grammar: &TopLevelGrammar) -> &Value {
        grammar.grammars[0].json_schema.as_ref().unwrap()
    }

    #[test]
    fn json_is_compact() {
        let g = top_level_grammar(&StructuredOutput::JsonObject).unwrap();
        let options = &schema_of(&g)["x-guidance"];
        assert_eq!(options["whitespace_flexible"], false);
        assert_eq!(options["item_separator"], ",");
        assert_eq!(options["key_separator"], ":");
    }

    #[test]
    fn strict_forbids_unlisted_properties_at_every_level() {
        let schema = r#"{"type":"object","properties":{"a":{"type":"object","properties":{"b":{"type":"integer"}}},
            "c":{"type":"array","items":{"type":"object","properties":{"d":{"type":"string"}}}},
            "e":{"type":"object","properties":{},"additionalProperties":true}},
            "$defs":{"x":{"type":"object","properties":{"y":{"enum":[{"properties":1}]}}}}}"#;
        let spec = |strict| StructuredOutput::JsonSchema {
            schema: schema.to_string(),
            strict,
        };
        let g = top_level_grammar(&spec(true)).unwrap();
        let s = schema_of(&g);
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert_eq!(s["properties"]["c"]["items"]["additionalProperties"], false);
        assert_eq!(s["properties"]["e"]["additionalProperties"], true);
        assert_eq!(s["$defs"]["x"]["additionalProperties"], false);
        // Data is not a schema.
        assert_eq!(
            s["$defs"]["x"]["properties"]["y"]["enum"][0],
            json!({"properties": 1})
        );
        let loose = top_level_grammar(&spec(false)).unwrap();
        assert!(schema_of(&loose).get("additionalProperties").is_none());
    }

    #[test]
    fn malformed_schemas_say_why() {
        let spec = |schema: &str| StructuredOutput::JsonSchema {
            schema: schema.to_string(),
            strict: false,
        };
        let err = top_level_grammar(&spec("{")).unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = top_level_grammar(&spec("[1]")).unwrap_err();
        assert!(err.contains("must be an object"), "{err}");
        assert!(top_level_grammar(&spec("true")).is_ok());
        let err = top_level_grammar(&StructuredOutput::Choice(vec![])).unwrap_err();
        assert!(err.contains("at least one"), "{err}");
    }

    #[test]
    fn choices_are_quoted_literally() {
        let g = top_level_grammar(&StructuredOutput::Choice(vec![
            "a\"b".to_string(),
            "x | y".to_string(),
        ]))
        .unwrap();
        assert_eq!(
            g.grammars[0].lark_grammar.as_deref(),
            Some(r#"start: "a\"b" | "x | y""#)
        );
    }
}
