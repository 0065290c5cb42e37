//! Helpers for unit tests: temporary directories, small safetensors files, and the
//! committed fixtures loaded on one CPU rank.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nanovllm_kernels::{CpuBackend, NoopCommunicator};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::config::ModelConfig;
use crate::decoder::DecoderLm;
use crate::error::ModelError;
use crate::loader::{ShardSpec, WeightSource};
use crate::model::ModelContext;
use crate::safetensors_source::SafetensorsSource;

/// One CPU rank, no tensor parallelism.
pub fn cpu_ctx() -> ModelContext {
    ModelContext {
        backend: Arc::new(CpuBackend::new()),
        comm: Arc::new(NoopCommunicator),
        shard: ShardSpec::default(),
        quantization: None,
    }
}

/// `fixtures/<name>` at the workspace root.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// An architecture's `load_*` function (e.g. `qwen3::load_qwen3`).
pub type LoadDecoder<F> =
    fn(&ModelConfig, &dyn WeightSource, &ModelContext) -> Result<DecoderLm<F>, ModelError>;

/// Fixture `name` loaded with `load` on [`cpu_ctx`].
pub fn load_decoder_fixture<F>(name: &str, load: LoadDecoder<F>) -> DecoderLm<F> {
    let dir = fixture(name);
    let config = ModelConfig::from_dir(&dir).unwrap();
    load(&config, &SafetensorsSource::open(&dir).unwrap(), &cpu_ctx()).unwrap()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("nanovllm-models-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tensor to write: name, safetensors dtype, shape, little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: &str, shape: &[usize], data: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: bytemuck::cast_slice(data).to_vec(),
        }
    }
    pub fn bf16(name: &str, shape: &[usize], data: &[f32]) -> Self {
        let v: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
        Self {
            name: name.into(),
            dtype: Dtype::BF16,
            shape: shape.to_vec(),
            bytes: bytemuck::cast_slice(&v).to_vec(),
        }
    }
    pub fn f16(name: &str, shape: &[usize], data: &[f32]) -> Self {
        let v: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        Self {
            name: name.into(),
            dtype: Dtype::F16,
            shape: shape.to_vec(),
            bytes: bytemuck::cast_slice(&v).to_vec(),
        }
    }
}

pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// `0, 1, 2, …` as f32: every element distinct, exact in bf16 up to 256.
pub fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}
