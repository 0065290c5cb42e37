//! The sparse mixture-of-experts block, one implementation for every MoE architecture
//! (Mixtral's `block_sparse_moe`, Qwen3-MoE's `mlp`); what differs is a parameter: the
//! experts' tensor names ([`ExpertNames`]) and whether the top-k weights are renormalised.
//! ```text
//! router_logits = x · gateᵀ                            [T, E], gate replicated
//! ids, weights  = moe_route(router_logits, top_k, w)   softmax in f32, top-k, renormalised
//!                                                      (Mixtral; Qwen3-MoE if norm_topk_prob)
//! out           = moe_experts(x, w13, w2, ids, weights)   Σ_j w_j · down_e(silu(gate_e·x) · up_e·x)
//! ```
//! Experts are `ModelConfig::expert_intermediate_size` wide (`moe_intermediate_size` for
//! Qwen3-MoE). Weights are stacked per layer ONCE at load, in the checkpoint dtype:
//! `w13: [E, 2·I_r, H]` (expert `e`'s rows `0..I_r` are its gate projection, `I_r..2·I_r`
//! its up projection, so `silu_mul` semantics hold) and `w2: [E, H, I_r]` (down).
//!
//! Tensor parallelism shards the intermediate dim of every expert: each rank holds all
//! `E` experts with `I_r = I / W` features (w1/w3 column-parallel, w2 row-parallel), routes
//! every token itself (the router is replicated), and the partial outputs are all-reduced.

use std::path::PathBuf;
use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator, Tensor, TopKWeights};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::Linear;
use crate::loader::WeightLoader;

/// An architecture's names for one expert's projections, under `{prefix}.experts.{e}.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertNames {
    /// `[I, H]`, through SiLU.
    pub gate: &'static str,
    /// `[I, H]`, multiplied with the activated gate.
    pub up: &'static str,
    /// `[H, I]`.
    pub down: &'static str,
}

impl ExpertNames {
    /// Mixtral: `w1` (gate), `w3` (up), `w2` (down).
    pub const MIXTRAL: Self = Self {
        gate: "w1",
        up: "w3",
        down: "w2",
    };
    /// Qwen3-MoE: `gate_proj`, `up_proj`, `down_proj`, as its dense MLP.
    pub const QWEN3_MOE: Self = Self {
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
    };
}

#[derive(Debug)]
pub struct SparseMoeBlock {
    /// Router `[E, H]`, replicated.
    gate: Linear,
    /// `[E, 2·I_r, H]`: per expert, this rank's w1 rows then its w3 rows.
    w13: Tensor,
    /// `[E, H, I_r]`: per expert, this rank's w2 columns.
    w2: Tensor,
    top_k: usize,
    /// How the chosen experts are weighed: renormalised to sum to 1, or as probabilities.
    weights: TopKWeights,
    comm: Arc<dyn Communicator>,
}

impl SparseMoeBlock {
    /// Loads `{prefix}.gate.weight [E, H]` and, with `names` (e.g. Mixtral's w1/w3/w2),
    /// `{prefix}.experts.{e}.{gate,up}.weight [I, H]`, `{prefix}.experts.{e}.{down}.weight
    /// [H, I]` for `e < E = num_local_experts` and `I =`
    /// [`ModelConfig::expert_intermediate_size`], this rank's share, stacked.
    /// `weights`: how routing weighs the chosen experts. Errors name a missing expert
    /// ([`ModelError::MissingExpert`]) or a router with another expert count
    /// ([`ModelError::ExpertCount`]). The caller has checked the world size
    /// ([`crate::check_tensor_parallel_size`]).
    pub fn load(
        loader: &WeightLoader,
        prefix: &str,
        names: ExpertNames,
        config: &ModelConfig,
        weights: TopKWeights,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        let (hidden, intermediate) = (config.hidden_size, config.expert_intermediate_size());
        let (experts, top_k) = (config.num_local_experts, config.num_experts_per_tok);
        if experts == 0 || top_k == 0 || top_k > experts {
            return Err(ModelError::InvalidConfig {
                file: PathBuf::from("config.json"),
                msg: format!(
                    "{prefix} is a sparse MoE block: it needs 1 ≤ num_experts_per_tok \
                     ({top_k}) ≤ num_local_experts ({experts})"
                ),
            });
        }
        let gate_name = format!("{prefix}.gate.weight");
        let gate = match loader.full(&gate_name, &[experts, hidden]) {
            Err(ModelError::WrongShape { found, .. })
                if found.len() == 2 && found[0] != experts && found[1] == hidden =>
            {
                return Err(ModelError::ExpertCount {
                    layer: prefix.to_owned(),
                    expected: experts,
                    found: found[0],
                })
            }
            result => result?,
        };
        let name = |e: usize, w: &str| format!("{prefix}.experts.{e}.{w}.weight");
        for e in 0..experts {
            for w in [names.gate, names.up, names.down] {
                if !loader.contains(&name(e, w)) {
                    return Err(ModelError::MissingExpert {
                        layer: prefix.to_owned(),
                        expert: e,
                        tensor: name(e, w),
                    });
                }
            }
        }
        // gate_0, up_0, gate_1, up_1, …: each part is split across ranks on its own, so every
        // rank's block of 2·I_r rows is its gate rows then its up rows.
        let w13_names: Vec<String> = (0..experts)
            .flat_map(|e| [name(e, names.gate), name(e, names.up)])
            .collect();
        let w13_parts: Vec<(&str, usize)> = w13_names
            .iter()
            .map(|n| (n.as_str(), intermediate))
            .collect();
        let w13 = loader.linear().packed_column_shard(&w13_parts, hidden)?;
        let local = w13.shape()[0] / (2 * experts);
        let w13 = w13.reshape(&[experts, 2 * local, hidden])?;
        let w2_names: Vec<String> = (0..experts).map(|e| name(e, names.down)).collect();
        let w2 = loader
            .linear()
            .stacked_row_shard(&w2_names, [hidden, intermediate])?;
        Ok(Self {
            gate: Linear::new(gate),
            w13,
            w2,
            top_k,
            weights,
            comm,
        })
    }

    /// `x: [T, H]` → router logits `[T, E]`.
    pub fn router_logits(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        self.gate.forward(backend, x)
    }

    /// `x: [T, H]` → `[T, H]`, summed across ranks.
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        let logits = self.router_logits(backend, x)?;
        let (topk_ids, topk_weights) = backend.moe_route(&logits, self.top_k, self.weights)?;
        let mut out = backend.moe_experts(x, &self.w13, &self.w2, &topk_ids, &topk_weights)?;
        if self.comm.world_size() > 1 {
            self.comm.all_reduce_sum(&mut out)?;
        }
        Ok(out)
    }

    /// Router weight `[E, H]`.
    pub fn gate(&self) -> &Tensor {
        self.gate.weight()
    }
    /// Stacked gate/up weights `[E, 2·I_r, H]`.
    pub fn w13(&self) -> &Tensor {
        &self.w13
    }
    /// Stacked down weights `[E, H, I_r]`.
    pub fn w2(&self) -> &Tensor {
        &self.w2
    }
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    /// How routing weighs the chosen experts.
    pub fn top_k_weights(&self) -> TopKWeights {
        self.weights
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use nanovllm_kernels::{CpuBackend, DType, NoopCommunicator};

    use super::*;
    use crate::loader::ShardSpec;
    use crate::safetensors_source::SafetensorsSource;
    use crate::test_util::{iota, write_safetensors, RawTensor, TempDir};

    const HIDDEN: usize = 4;
    const INTER: usize = 6;
    const EXPERTS: usize = 3;

    fn config(experts: usize, top_k: usize) -> ModelConfig {
        let json = format!(
            r#"{{"architectures": ["MixtralForCausalLM"], "hidden_size": {HIDDEN},
                "intermediate_size": {INTER}, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 8, "max_position_embeddings": 8, "rms_norm_eps": 1e-5,
                "num_local_experts": {experts}, "num_experts_per_tok": {top_k}}}"#
        );
        ModelConfig::from_json_str(&json, Path::new("inline")).unwrap()
    }

    /// Distinct values per tensor: expert `e`'s `w` holds `base(e, w) + iota`.
    fn values(e: usize, w: &str, len: usize) -> Vec<f32> {
        let base = 1000.0 * e as f32
            + 100.0 * ["w1", "w2", "w3"].iter().position(|&n| n == w).unwrap() as f32;
        iota(len).iter().map(|v| base + v).collect()
    }

    /// A checkpoint with `gate_experts` router rows and the experts in `experts`, all f32
    /// except expert 0's w3 in `w3_dtype`.
    fn checkpoint(gate_experts: usize, experts: &[usize], w3_dtype: DType) -> TempDir {
        let dir = TempDir::new("moe");
        let p = "model.layers.0.block_sparse_moe";
        let mut tensors = vec![RawTensor::f32(
            &format!("{p}.gate.weight"),
            &[gate_experts, HIDDEN],
            &iota(gate_experts * HIDDEN),
        )];
        for &e in experts {
            for (w, shape) in [
                ("w1", [INTER, HIDDEN]),
                ("w3", [INTER, HIDDEN]),
                ("w2", [HIDDEN, INTER]),
            ] {
                let name = format!("{p}.experts.{e}.{w}.weight");
                let data = values(e, w, INTER * HIDDEN);
                tensors.push(match (e, w, w3_dtype) {
                    (0, "w3", DType::BF16) => RawTensor::bf16(&name, &shape, &data),
                    _ => RawTensor::f32(&name, &shape, &data),
                });
            }
        }
        write_safetensors(&dir.path().join("model.safetensors"), &tensors);
        dir
    }

    fn load(
        dir: &TempDir,
        config: &ModelConfig,
        shard: ShardSpec,
    ) -> Result<SparseMoeBlock, ModelError> {
        let source = SafetensorsSource::open(dir.path()).unwrap();
        let backend = CpuBackend::new();
        let loader = WeightLoader::new(&source, &backend, shard);
        SparseMoeBlock::load(
            &loader,
            "model.layers.0.block_sparse_moe",
            ExpertNames::MIXTRAL,
            config,
            TopKWeights::Renormalized,
            Arc::new(NoopCommunicator),
        )
    }

    /// Rows `rows` (of `cols` columns each) of a row-major matrix.
    fn rows(data: &[f32], cols: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
        data[rows.start * cols..rows.end * cols].to_vec()
    }

    /// Columns `cols` of a row-major `[_, width]` matrix.
    fn cols(data: &[f32], width: usize, cols: std::ops::Range<usize>) -> Vec<f32> {
        data.chunks_exact(width)
            .flat_map(|r| r[cols.clone()].to_vec())
            .collect()
    }

    #[test]
    fn experts_are_stacked_w1_then_w3_and_sharded_by_intermediate() {
        let dir = checkpoint(EXPERTS, &[0, 1, 2], DType::F32);
        for world_size in [1, 2, 3] {
            for rank in 0..world_size {
                let moe = load(&dir, &config(EXPERTS, 2), ShardSpec { rank, world_size }).unwrap();
                let per = INTER / world_size;
                let range = rank * per..(rank + 1) * per;
                let mut want13 = Vec::new();
                let mut want2 = Vec::new();
                for e in 0..EXPERTS {
                    want13.extend(rows(
                        &values(e, "w1", INTER * HIDDEN),
                        HIDDEN,
                        range.clone(),
                    ));
                    want13.extend(rows(
                        &values(e, "w3", INTER * HIDDEN),
                        HIDDEN,
                        range.clone(),
                    ));
                    want2.extend(cols(&values(e, "w2", INTER * HIDDEN), INTER, range.clone()));
                }
                assert_eq!(moe.w13().shape(), &[EXPERTS, 2 * per, HIDDEN]);
                assert_eq!(moe.w2().shape(), &[EXPERTS, HIDDEN, per]);
                assert_eq!(
                    moe.w13().to_vec_f32().unwrap(),
                    want13,
                    "w13 rank {rank}/{world_size}"
                );
                assert_eq!(
                    moe.w2().to_vec_f32().unwrap(),
                    want2,
                    "w2 rank {rank}/{world_size}"
                );
                assert_eq!(moe.gate().to_vec_f32().unwrap(), iota(EXPERTS * HIDDEN));
            }
        }
    }

    #[test]
    fn a_missing_expert_is_named() {
        let dir = checkpoint(EXPERTS, &[0, 2], DType::F32);
        let err = match load(&dir, &config(EXPERTS, 2), ShardSpec::default()) {
            Err(e) => e,
            Ok(_) => panic!("expected MissingExpert, got a block"),
        };
        assert!(err.to_string().contains("expert 1"), "{err}");
        match err {
            ModelError::MissingExpert {
                layer,
                expert,
                tensor,
            } => {
                assert_eq!(
                    (layer.as_str(), expert),
                    ("model.layers.0.block_sparse_moe", 1)
                );
                assert_eq!(
                    tensor,
                    "model.layers.0.block_sparse_moe.experts.1.w1.weight"
                );
            }
            other => panic!("expected MissingExpert, got {other:?}"),
        }
    }

    #[test]
    fn a_router_with_another_expert_count_is_reported() {
        // The checkpoint has 3 experts, the config says 4.
        let dir = checkpoint(EXPERTS, &[0, 1, 2], DType::F32);
        match load(&dir, &config(4, 2), ShardSpec::default()) {
            Err(ModelError::ExpertCount {
                expected, found, ..
            }) => assert_eq!((expected, found), (4, 3)),
            other => panic!("expected ExpertCount, got {other:?}"),
        }
    }

    #[test]
    fn mixed_expert_dtypes_and_bad_top_k_are_errors() {
        let dir = checkpoint(EXPERTS, &[0, 1, 2], DType::BF16);
        assert!(matches!(
            load(&dir, &config(EXPERTS, 2), ShardSpec::default()),
            Err(ModelError::MixedDTypes { .. })
        ));
        let dir = checkpoint(EXPERTS, &[0, 1, 2], DType::F32);
        match load(&dir, &config(EXPERTS, 0), ShardSpec::default()) {
            Err(ModelError::InvalidConfig { msg, .. }) => {
                assert!(msg.contains("num_experts_per_tok"), "{msg}")
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
}
