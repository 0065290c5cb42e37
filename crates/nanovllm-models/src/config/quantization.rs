//! `quantization_config` of `config.json`: how a checkpoint's weights are already
//! quantized on disk.
//!
//! Only `quant_method: "fp8"` loads (e4m3, as Qwen's official `Qwen3-*-FP8` and vLLM's
//! `Fp8Config` write it): each quantized linear `X.weight` is stored as `F8_E4M3` with
//! either a block-wise `X.weight_scale_inv` of `[ceil(N / bn), ceil(K / bk)]` scales for
//! `weight_block_size = [bn, bk]`, or a per-tensor `X.weight_scale`; `w = q · s` either
//! way ([`crate::fp8_checkpoint`] re-blocks them). Every other `quant_method` (awq, gptq,
//! bitsandbytes, compressed-tensors, …) is refused by name at parse time, before any
//! tensor is read.

use std::path::Path;

use serde_json::Value;

use super::invalid;
use crate::error::ModelError;

/// A checkpoint quantized on disk, as its `quantization_config` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointQuantization {
    /// `quant_method: "fp8"`, e4m3 weights.
    Fp8 {
        /// `weight_block_size: [rows, cols]` of one `weight_scale_inv` entry; `None`: one
        /// scale per tensor (`weight_scale`).
        weight_block_size: Option<[usize; 2]>,
        /// `activation_scheme`: `"dynamic"` (the default) or `"static"` (with an
        /// `input_scale` per linear, which weight-only loading ignores).
        activation_scheme: String,
    },
}

impl CheckpointQuantization {
    /// The `quant_method` as config.json names it.
    pub fn method(&self) -> &'static str {
        match self {
            CheckpointQuantization::Fp8 { .. } => "fp8",
        }
    }
}

/// Parses `quantization_config` (absent or `null`: an unquantized checkpoint).
pub(super) fn parse(
    value: Option<&Value>,
    file: &Path,
) -> Result<Option<CheckpointQuantization>, ModelError> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(invalid(
                file,
                format!("quantization_config must be an object, found {other}"),
            ))
        }
    };
    let method = match obj.get("quant_method") {
        Some(Value::String(m)) => m.as_str(),
        other => {
            return Err(invalid(
                file,
                format!(
                    "quantization_config.quant_method must be a string naming the method, \
                     found {}",
                    other.map_or("nothing".to_owned(), Value::to_string)
                ),
            ))
        }
    };
    if method != "fp8" {
        return Err(ModelError::UnsupportedQuantization {
            method: method.to_owned(),
        });
    }
    match obj.get("fmt") {
        None | Some(Value::Null) => {}
        Some(Value::String(fmt)) if fmt == "e4m3" => {}
        Some(other) => {
            return Err(invalid(
                file,
                format!(
                    "quantization_config.fmt is {other}: only \"e4m3\" FP8 weights are supported"
                ),
            ))
        }
    }
    let weight_block_size = match obj.get("weight_block_size") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let dims: Option<Vec<usize>> = v.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                    .filter(|&x| x > 0)
                    .collect()
            });
            match dims.as_deref() {
                Some(&[rows, cols]) if v.as_array().is_some_and(|a| a.len() == 2) => {
                    Some([rows, cols])
                }
                _ => {
                    return Err(invalid(
                        file,
                        format!(
                            "quantization_config.weight_block_size must be two positive \
                             integers [rows, cols], found {v}"
                        ),
                    ))
                }
            }
        }
    };
    let activation_scheme = match obj.get("activation_scheme") {
        None | Some(Value::Null) => "dynamic".to_owned(),
        Some(Value::String(s)) if s == "dynamic" || s == "static" => s.clone(),
        Some(other) => {
            return Err(invalid(
                file,
                format!(
                    "quantization_config.activation_scheme is {other}: expected \"dynamic\" or \
                     \"static\""
                ),
            ))
        }
    };
    Ok(Some(CheckpointQuantization::Fp8 {
        weight_block_size,
        activation_scheme,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    fn parsed(v: Value) -> Result<Option<CheckpointQuantization>, ModelError> {
        parse(Some(&v), Path::new("config.json"))
    }

    #[test]
    fn qwen3_fp8_block_config_parses() {
        // Qwen/Qwen3-0.6B-FP8's quantization_config, verbatim.
        let q = parsed(json!({"activation_scheme": "dynamic", "fmt": "e4m3",
            "quant_method": "fp8", "weight_block_size": [128, 128]}))
        .unwrap();
        assert_eq!(
            q,
            Some(CheckpointQuantization::Fp8 {
                weight_block_size: Some([128, 128]),
                activation_scheme: "dynamic".into(),
            })
        );
        assert_eq!(parse(None, Path::new("c")).unwrap(), None);
        assert_eq!(parsed(Value::Null).unwrap(), None);
    }

    #[test]
    fn per_tensor_static_fp8_parses() {
        let q = parsed(json!({"quant_method": "fp8", "activation_scheme": "static"})).unwrap();
        assert_eq!(
            q,
            Some(CheckpointQuantization::Fp8 {
                weight_block_size: None,
                activation_scheme: "static".into(),
            })
        );
    }

    #[test]
    fn other_methods_are_refused_by_name() {
        for method in ["awq", "gptq", "bitsandbytes", "compressed-tensors", "mxfp4"] {
            let err = parsed(json!({"quant_method": method, "bits": 4}))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{method:?}")) && err.contains("fp8"),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_fp8_configs_say_which_field() {
        for (v, field) in [
            (json!({"quant_method": "fp8", "fmt": "e5m2"}), "fmt"),
            (
                json!({"quant_method": "fp8", "weight_block_size": [128]}),
                "weight_block_size",
            ),
            (
                json!({"quant_method": "fp8", "weight_block_size": [0, 128]}),
                "weight_block_size",
            ),
            (
                json!({"quant_method": "fp8", "activation_scheme": "per-token"}),
                "activation_scheme",
            ),
            (json!({"bits": 8}), "quant_method"),
            (json!("fp8"), "quantization_config"),
        ] {
            let err = parsed(v).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
