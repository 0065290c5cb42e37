//! `tools` and `tool_choice` of a chat request → what the reply's tool calls come from.
//!
//! - `"none"`: the tools still reach the chat template (as in vLLM), the reply is text.
//! - `"auto"` (the default when tools are given): the model decides; its reply goes
//!   through the model family's [`ToolParserKind`]. An explicit `"auto"` on a model with
//!   no parser is refused; an implicit one then behaves as `"none"`.
//! - `"required"` and `{"type": "function", "function": {"name": …}}` are enforced with a
//!   grammar, as vLLM does: `required` constrains the output to a JSON array of
//!   `{"name": <one of the tools>, "parameters": <that tool's parameter schema>}` (at least
//!   one, at most one with `parallel_tool_calls: false`), a named function to its parameter
//!   schema. That output is turned into calls directly ([`Forced::calls`]), not parsed.
//!
//! Malformed tools, a `required` or named choice without tools, and a name that is not
//! among the tools are 400s naming the field.

use std::collections::BTreeMap;

use nanovllm_core::{SamplingParams, StructuredOutput};
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use super::errors::ApiError;
use super::tool_parsers::{ToolCall, ToolParserKind};

/// The request fields this module reads (from the same body as the request struct).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ToolFields {
    pub tools: Option<Json>,
    pub tool_choice: Option<Json>,
    /// `false`: at most one call (enforced for `required`).
    pub parallel_tool_calls: Option<bool>,
}

/// Where the reply's tool calls come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolMode {
    /// No tool calls: the reply is text.
    Off,
    /// The model's free-form reply is parsed.
    Parse(ToolParserKind),
    /// The output is constrained to calls.
    Forced(Forced),
}

/// A grammar-enforced tool choice.
#[derive(Clone, Debug, PartialEq)]
pub struct Forced {
    /// The JSON schema of the output.
    pub schema: Json,
    /// Every function's `strict` was true.
    pub strict: bool,
    /// `Some(name)`: a named function (the output is its arguments); `None`: `required`.
    pub named: Option<String>,
}

impl Forced {
    /// Constrains `params` to this choice's output; refused when the request already
    /// constrains its output otherwise (`response_format`, `structured_outputs`).
    pub fn constrain(&self, params: &mut SamplingParams) -> Result<(), ApiError> {
        if params.structured_output.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice \"required\" or a named function constrains the output to tool calls, so it cannot be combined with response_format or structured_outputs: drop one of them",
            ));
        }
        params.structured_output = Some(self.structured_output());
        Ok(())
    }

    pub fn structured_output(&self) -> StructuredOutput {
        StructuredOutput::JsonSchema {
            schema: self.schema.to_string(),
            strict: self.strict,
        }
    }

    /// The calls in a constrained output; `None` when it is not complete (cut by
    /// `max_tokens`), and the output is then returned as text.
    pub fn calls(&self, output: &str) -> Option<Vec<ToolCall>> {
        let value: Json = serde_json::from_str(output.trim()).ok()?;
        if let Some(name) = &self.named {
            return value
                .is_object()
                .then(|| vec![ToolCall::new(name.clone(), value.to_string())]);
        }
        let calls = value
            .as_array()?
            .iter()
            .map(|item| {
                let name = item.get("name")?.as_str()?.to_string();
                let parameters = item.get("parameters")?;
                Some(ToolCall::new(name, parameters.to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        (!calls.is_empty()).then_some(calls)
    }
}

/// One function of `tools`.
#[derive(Clone, Debug, PartialEq)]
struct Function {
    name: String,
    /// Its parameter schema (an empty object schema when it gives none).
    parameters: Json,
    strict: bool,
}

/// Checks `fields` and decides the [`ToolMode`]; `parser` is the server's tool-call parser.
pub fn resolve(fields: &ToolFields, parser: Option<ToolParserKind>) -> Result<ToolMode, ApiError> {
    let functions = match &fields.tools {
        None | Some(Json::Null) => Vec::new(),
        Some(tools) => functions(tools)?,
    };
    let choice = match &fields.tool_choice {
        None | Some(Json::Null) => {
            return Ok(match parser {
                Some(p) if !functions.is_empty() => ToolMode::Parse(p),
                _ => ToolMode::Off,
            })
        }
        Some(choice) => choice,
    };
    let need_tools = |what: &str| {
        ApiError::invalid(
            "tool_choice",
            format!("tool_choice {what} needs `tools`: give the functions the model may call"),
        )
    };
    match choice {
        Json::String(s) if s == "none" => Ok(ToolMode::Off),
        Json::String(s) if s == "auto" => match parser {
            _ if functions.is_empty() => Ok(ToolMode::Off),
            Some(p) => Ok(ToolMode::Parse(p)),
            None => Err(ApiError::invalid(
                "tool_choice",
                "tool_choice \"auto\" needs a tool-call parser, and this model's family has no default one: start the server with --tool-call-parser (hermes or mistral), or use tool_choice \"required\" or a named function",
            )),
        },
        Json::String(s) if s == "required" => {
            if functions.is_empty() {
                return Err(need_tools("\"required\""));
            }
            let max_items = (fields.parallel_tool_calls == Some(false)).then_some(1);
            Ok(ToolMode::Forced(required(&functions, max_items)?))
        }
        Json::Object(_) => {
            let name = named_choice(choice)?;
            if functions.is_empty() {
                return Err(need_tools(&format!("naming function `{name}`")));
            }
            let Some(f) = functions.iter().find(|f| f.name == name) else {
                let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!(
                        "tool_choice names function `{name}`, which is not among the tools ({})",
                        names.join(", ")
                    ),
                ));
            };
            Ok(ToolMode::Forced(Forced {
                schema: f.parameters.clone(),
                strict: f.strict,
                named: Some(f.name.clone()),
            }))
        }
        other => Err(ApiError::invalid(
            "tool_choice",
            format!("tool_choice must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {other}"),
        )),
    }
}

/// `{"type": "function", "function": {"name": "..."}}` → the name.
fn named_choice(choice: &Json) -> Result<String, ApiError> {
    let kind = choice.get("type").and_then(Json::as_str);
    let name = choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Json::as_str);
    match (kind, name) {
        (Some("function"), Some(name)) => Ok(name.to_string()),
        _ => Err(ApiError::invalid(
            "tool_choice",
            format!("a named tool_choice must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {choice}"),
        )),
    }
}

/// Checks `tools`: a list of `{"type": "function", "function": {"name", "description"?,
/// "parameters"?, "strict"?}}` with distinct names.
fn functions(tools: &Json) -> Result<Vec<Function>, ApiError> {
    let Json::Array(tools) = tools else {
        return Err(ApiError::invalid(
            "tools",
            format!("tools must be a list of {{\"type\": \"function\", \"function\": {{...}}}}, got {tools}"),
        ));
    };
    let mut out: Vec<Function> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        if tool.get("type").and_then(Json::as_str) != Some("function") {
            return Err(ApiError::invalid(
                format!("{param}.type"),
                format!("every tool must have \"type\": \"function\" (the only kind of tool), got {tool}"),
            ));
        }
        let Some(Json::Object(function)) = tool.get("function") else {
            return Err(ApiError::invalid(
                format!("{param}.function"),
                format!("{param} needs a `function` object with at least a `name`"),
            ));
        };
        let Some(name) = function
            .get("name")
            .and_then(Json::as_str)
            .filter(|n| !n.is_empty())
        else {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                format!("{param}.function needs a non-empty string `name`"),
            ));
        };
        if out.iter().any(|f| f.name == name) {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                format!("two tools are named `{name}`: function names must be distinct"),
            ));
        }
        let parameters = match function.get("parameters") {
            None | Some(Json::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Json::Object(_)) => p.clone(),
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{param}.function.parameters"),
                    format!("parameters must be a JSON Schema object, got {other}"),
                ))
            }
        };
        let strict = match function.get("strict") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{param}.function.strict"),
                    format!("strict must be true or false, got {other}"),
                ))
            }
        };
        out.push(Function {
            name: name.to_string(),
            parameters,
            strict,
        });
    }
    Ok(out)
}

/// The schema of `required`: an array of calls, each one of the functions with its
/// parameters. Each function's `$defs` move to the root, where `$ref`s resolve.
fn required(functions: &[Function], max_items: Option<usize>) -> Result<Forced, ApiError> {
    let mut defs: BTreeMap<String, Json> = BTreeMap::new();
    let mut alternatives = Vec::with_capacity(functions.len());
    for f in functions {
        let mut parameters = f.parameters.clone();
        if let Some(Json::Object(own)) = parameters.as_object_mut().and_then(|p| p.remove("$defs"))
        {
            for (key, def) in own {
                match defs.get(&key) {
                    Some(existing) if *existing != def => {
                        return Err(ApiError::invalid(
                            "tools",
                            format!("two tools define `$defs.{key}` differently; tool_choice \"required\" needs one meaning per definition name"),
                        ))
                    }
                    _ => {
                        defs.insert(key, def);
                    }
                }
            }
        }
        alternatives.push(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [f.name]},
                "parameters": parameters,
            },
            "required": ["name", "parameters"],
            "additionalProperties": false,
        }));
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("array"));
    schema.insert("minItems".into(), json!(1));
    if let Some(max) = max_items {
        schema.insert("maxItems".into(), json!(max));
    }
    schema.insert("items".into(), json!({"anyOf": alternatives}));
    if !defs.is_empty() {
        schema.insert("$defs".into(), json!(defs));
    }
    Ok(Forced {
        schema: Json::Object(schema),
        strict: functions.iter().all(|f| f.strict),
        named: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(tools: Json, tool_choice: Option<Json>) -> ToolFields {
        ToolFields {
            tools: Some(tools),
            tool_choice,
            parallel_tool_calls: None,
        }
    }

    fn weather() -> Json {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}])
    }

    fn param_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidField { param, .. } => param.unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_choice_is_auto_with_tools_and_off_without() {
        let hermes = Some(ToolParserKind::Hermes);
        assert_eq!(
            resolve(&fields(weather(), None), hermes).unwrap(),
            ToolMode::Parse(ToolParserKind::Hermes)
        );
        assert_eq!(
            resolve(&fields(weather(), None), None).unwrap(),
            ToolMode::Off
        );
        assert_eq!(
            resolve(&ToolFields::default(), hermes).unwrap(),
            ToolMode::Off
        );
        assert_eq!(
            resolve(&fields(weather(), Some(json!("none"))), hermes).unwrap(),
            ToolMode::Off
        );
        // An explicit auto without a parser is refused.
        let e = resolve(&fields(weather(), Some(json!("auto"))), None).unwrap_err();
        assert_eq!(param_of(e), "tool_choice");
    }

    #[test]
    fn required_is_an_array_of_the_tools_calls() {
        let mut f = fields(weather(), Some(json!("required")));
        let ToolMode::Forced(forced) = resolve(&f, None).unwrap() else {
            panic!()
        };
        assert_eq!(forced.named, None);
        assert_eq!(forced.schema["minItems"], 1);
        assert!(forced.schema.get("maxItems").is_none());
        let alternatives = forced.schema["items"]["anyOf"].as_array().unwrap();
        assert_eq!(alternatives.len(), 2);
        assert_eq!(
            alternatives[0]["properties"]["name"]["enum"],
            json!(["get_weather"])
        );
        assert_eq!(
            alternatives[1]["properties"]["parameters"],
            json!({"type": "object", "properties": {}})
        );
        f.parallel_tool_calls = Some(false);
        let ToolMode::Forced(forced) = resolve(&f, None).unwrap() else {
            panic!()
        };
        assert_eq!(forced.schema["maxItems"], 1);
        let calls = forced
            .calls(r#"[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "now", "parameters": {}}]"#)
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("get_weather", r#"{"city":"Paris"}"#)
        );
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(forced.calls(r#"[{"name": "now", "parameters": {"#), None);
        assert_eq!(forced.calls("[]"), None);
    }

    #[test]
    fn a_named_choice_is_that_functions_parameters() {
        let f = fields(
            weather(),
            Some(json!({"type": "function", "function": {"name": "get_weather"}})),
        );
        let ToolMode::Forced(forced) = resolve(&f, None).unwrap() else {
            panic!()
        };
        assert_eq!(forced.schema, weather()[0]["function"]["parameters"]);
        let calls = forced.calls(r#" {"city": "Oslo"} "#).unwrap();
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("get_weather", r#"{"city":"Oslo"}"#)
        );
        assert!(matches!(
            forced.structured_output(),
            StructuredOutput::JsonSchema { strict: false, .. }
        ));
    }

    #[test]
    fn defs_move_to_the_root_and_must_agree() {
        let tool = |name: &str, def: Json| {
            json!({"type": "function", "function": {"name": name, "parameters": {
                "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": def}}}})
        };
        let same = json!([
            tool("a", json!({"type": "integer"})),
            tool("b", json!({"type": "integer"}))
        ]);
        let ToolMode::Forced(forced) =
            resolve(&fields(same, Some(json!("required"))), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(forced.schema["$defs"], json!({"P": {"type": "integer"}}));
        assert!(
            forced.schema["items"]["anyOf"][0]["properties"]["parameters"]
                .get("$defs")
                .is_none()
        );
        let differ = json!([
            tool("a", json!({"type": "integer"})),
            tool("b", json!({"type": "string"}))
        ]);
        assert_eq!(
            param_of(resolve(&fields(differ, Some(json!("required"))), None).unwrap_err()),
            "tools"
        );
    }

    #[test]
    fn bad_tools_and_choices_name_the_field() {
        let cases = [
            (json!({"type": "function"}), json!("auto"), "tools"),
            (
                json!([{"type": "retrieval"}]),
                json!("auto"),
                "tools[0].type",
            ),
            (
                json!([{"type": "function"}]),
                json!("auto"),
                "tools[0].function",
            ),
            (
                json!([{"type": "function", "function": {"name": ""}}]),
                json!("auto"),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
                json!("auto"),
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
                json!("auto"),
                "tools[1].function.name",
            ),
            (json!([]), json!("required"), "tool_choice"),
            (
                weather(),
                json!({"type": "function", "function": {"name": "nope"}}),
                "tool_choice.function.name",
            ),
            (
                weather(),
                json!({"function": {"name": "now"}}),
                "tool_choice",
            ),
            (weather(), json!("sometimes"), "tool_choice"),
            (weather(), json!(3), "tool_choice"),
        ];
        for (tools, choice, param) in cases {
            let e = resolve(
                &fields(tools.clone(), Some(choice.clone())),
                Some(ToolParserKind::Hermes),
            )
            .expect_err(&format!("{tools} {choice}"));
            assert_eq!(param_of(e), param, "{tools} {choice}");
        }
    }
}
