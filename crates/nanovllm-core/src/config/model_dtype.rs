//! [`ModelDType`]: the dtype weights are held in (`--dtype`, vLLM's names).
//!
//! `auto` keeps each tensor in the dtype the checkpoint stores it in (the CUDA backend
//! then narrows every float weight to bf16, which its kernels read). An explicit dtype
//! converts every float weight while loading, so the model computes with weights of that
//! precision. Activations are the backend's own dtype ([`Backend::activation_dtype`]: f32
//! on the CPU, bf16 on CUDA); neither backend has kernels for another activation dtype,
//! so a dtype the backend cannot hold its weights in is refused before anything loads.
//!
//! [`Backend::activation_dtype`]: nanovllm_kernels::Backend::activation_dtype

use nanovllm_kernels::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The weights' dtype: `auto` (the checkpoint's) or one of bf16, f16, f32, each under
/// vLLM's spellings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ModelDType {
    /// The checkpoint's dtype, tensor by tensor (`torch_dtype` / `dtype` for dummy weights).
    #[default]
    Auto,
    #[serde(alias = "bf16")]
    #[cfg_attr(feature = "clap", value(alias = "bf16"))]
    Bfloat16,
    #[serde(alias = "f16", alias = "half")]
    #[cfg_attr(feature = "clap", value(aliases = ["f16", "half"]))]
    Float16,
    #[serde(alias = "f32", alias = "float")]
    #[cfg_attr(feature = "clap", value(aliases = ["f32", "float"]))]
    Float32,
}

impl ModelDType {
    /// Every spelling accepted, by TOML (serde) and by `--dtype` (clap) alike: the two
    /// parsers declare their aliases apart, and their tests check both against this list.
    pub const SPELLINGS: [(&'static str, ModelDType); 9] = [
        ("auto", ModelDType::Auto),
        ("bfloat16", ModelDType::Bfloat16),
        ("bf16", ModelDType::Bfloat16),
        ("float16", ModelDType::Float16),
        ("f16", ModelDType::Float16),
        ("half", ModelDType::Float16),
        ("float32", ModelDType::Float32),
        ("f32", ModelDType::Float32),
        ("float", ModelDType::Float32),
    ];

    /// The explicit dtype, `None` for `auto`.
    pub fn explicit(self) -> Option<DType> {
        match self {
            ModelDType::Auto => None,
            ModelDType::Bfloat16 => Some(DType::BF16),
            ModelDType::Float16 => Some(DType::F16),
            ModelDType::Float32 => Some(DType::F32),
        }
    }

    /// The dtype every float weight is converted to while loading on `device`, `None` to
    /// keep the checkpoint's. The CUDA backend's kernels read bf16 weights only (it
    /// narrows `auto` weights itself), so an explicit f16 or f32 there is an error.
    pub fn weight_dtype_on(self, device: Device) -> Result<Option<DType>> {
        match (self.explicit(), device) {
            (Some(dtype @ (DType::F16 | DType::F32)), Device::Cuda(_)) => {
                Err(EngineError::Unsupported {
                    what: format!(
                        "--dtype {dtype} on CUDA: the CUDA kernels run bf16 weights and \
                         activations only; use --dtype auto or bfloat16 (or --device cpu)"
                    ),
                })
            }
            (dtype, _) => Ok(dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_spellings_parse_from_toml() {
        #[derive(Deserialize)]
        struct T {
            dtype: ModelDType,
        }
        for (text, want) in ModelDType::SPELLINGS {
            let t: T = toml::from_str(&format!("dtype = \"{text}\"")).unwrap();
            assert_eq!(t.dtype, want, "{text}");
        }
        assert!(toml::from_str::<T>("dtype = \"float64\"").is_err());
    }

    #[test]
    fn cuda_refuses_weights_its_kernels_cannot_read() {
        use ModelDType::*;
        assert_eq!(Auto.weight_dtype_on(Device::Cpu).unwrap(), None);
        assert_eq!(Auto.weight_dtype_on(Device::Cuda(0)).unwrap(), None);
        for (d, want) in [
            (Bfloat16, DType::BF16),
            (Float16, DType::F16),
            (Float32, DType::F32),
        ] {
            assert_eq!(d.weight_dtype_on(Device::Cpu).unwrap(), Some(want));
        }
        assert_eq!(
            Bfloat16.weight_dtype_on(Device::Cuda(0)).unwrap(),
            Some(DType::BF16)
        );
        for d in [Float16, Float32] {
            let msg = d.weight_dtype_on(Device::Cuda(0)).unwrap_err().to_string();
            assert!(
                msg.contains("bf16 weights") && msg.contains("--dtype auto"),
                "{msg}"
            );
        }
    }
}
