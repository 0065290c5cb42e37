//! [`GenerationConfigSource`]: where the sampling defaults come from (`--generation-config`,
//! vLLM's flag and values).
//!
//! - `auto`: the model directory's `generation_config.json` (a missing file means none).
//! - `vllm`: no model defaults: requests without a value get the engine's own defaults
//!   ([`nanovllm_scheduler::SamplingParams::default`]). As in vLLM, only the *sampling*
//!   defaults are dropped: the end-of-sequence ids still come from the model's
//!   `generation_config.json` (vLLM adds them to every request's stop tokens the same way).
//! - a folder: `generation_config.json` read from there, for sampling defaults and EOS ids
//!   alike; the file must exist.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nanovllm_models::GenerationConfig;
use serde::{Deserialize, Serialize};

use crate::error::Result;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GenerationConfigSource {
    #[default]
    Auto,
    Vllm,
    Folder(PathBuf),
}

impl FromStr for GenerationConfigSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "" => Err("expected auto, vllm or a folder holding generation_config.json".into()),
            "auto" => Ok(Self::Auto),
            "vllm" => Ok(Self::Vllm),
            folder => Ok(Self::Folder(PathBuf::from(folder))),
        }
    }
}

impl TryFrom<String> for GenerationConfigSource {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<GenerationConfigSource> for String {
    fn from(source: GenerationConfigSource) -> String {
        source.to_string()
    }
}

impl fmt::Display for GenerationConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Vllm => f.write_str("vllm"),
            Self::Folder(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl GenerationConfigSource {
    /// The generation config the engine runs with, for a model in `model_dir`.
    pub fn load(&self, model_dir: &Path) -> Result<GenerationConfig> {
        Ok(match self {
            Self::Auto => GenerationConfig::from_dir(model_dir)?,
            Self::Vllm => {
                let model = GenerationConfig::from_dir(model_dir)?;
                GenerationConfig {
                    eos_token_ids: model.eos_token_ids,
                    bos_token_id: model.bos_token_id,
                    ..GenerationConfig::default()
                }
            }
            Self::Folder(dir) => {
                let file = dir.join("generation_config.json");
                let json = std::fs::read_to_string(&file).map_err(|error| {
                    nanovllm_models::ModelError::Io {
                        path: file.clone(),
                        error,
                    }
                })?;
                GenerationConfig::from_json_str(&json, &file)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str, generation_config: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("nanovllm-gen-source-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("generation_config.json"), generation_config).unwrap();
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_and_prints_the_three_forms() {
        for (text, want) in [
            ("auto", GenerationConfigSource::Auto),
            ("vllm", GenerationConfigSource::Vllm),
            (
                "some/dir",
                GenerationConfigSource::Folder("some/dir".into()),
            ),
        ] {
            let source: GenerationConfigSource = text.parse().unwrap();
            assert_eq!(source, want);
            assert_eq!(source.to_string(), text);
        }
        assert!("".parse::<GenerationConfigSource>().is_err());
    }

    #[test]
    fn vllm_drops_the_sampling_defaults_but_keeps_eos() {
        let model = TempDir::new(
            "model",
            r#"{"eos_token_id": [7, 8], "bos_token_id": 1, "temperature": 0.6, "top_k": 20,
                "top_p": 0.95, "max_new_tokens": 99, "do_sample": true}"#,
        );
        let auto = GenerationConfigSource::Auto.load(&model.0).unwrap();
        assert_eq!((auto.temperature, auto.top_k), (Some(0.6), Some(20)));
        let vllm = GenerationConfigSource::Vllm.load(&model.0).unwrap();
        assert_eq!(
            vllm,
            GenerationConfig {
                eos_token_ids: vec![7, 8],
                bos_token_id: Some(1),
                ..GenerationConfig::default()
            }
        );
        let other = TempDir::new("folder", r#"{"eos_token_id": 3, "temperature": 1.5}"#);
        let folder = GenerationConfigSource::Folder(other.0.clone())
            .load(&model.0)
            .unwrap();
        assert_eq!(
            (folder.eos_token_ids, folder.temperature),
            (vec![3], Some(1.5))
        );
        let missing = GenerationConfigSource::Folder(model.0.join("nope"))
            .load(&model.0)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope/generation_config.json"), "{missing}");
    }
}
