//! MoE arguments both backends check the same way: `top_k` against the router's experts,
//! and the shapes of `moe_experts`' operands. Dtype requirements differ per backend (the
//! CPU reads any float weight, CUDA wants bf16), so they are checked there.

use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

use super::{dims2, dims3, expect_shape};

/// `(tokens, experts)` of `router_logits: [T, E]`, with `1 ≤ top_k ≤ E`.
pub(crate) fn route_shapes(
    op: &'static str,
    router_logits: &Tensor,
    top_k: usize,
) -> Result<(usize, usize)> {
    let (tokens, experts) = dims2(op, "router_logits", router_logits)?;
    if top_k == 0 || top_k > experts {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "top_k {top_k} must be between 1 and the number of experts {experts} \
                 (num_experts_per_tok ≤ num_local_experts)"
            ),
        });
    }
    Ok((tokens, experts))
}

/// Validated shapes of one `moe_experts` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExpertDims {
    pub tokens: usize,
    pub hidden: usize,
    pub experts: usize,
    pub intermediate: usize,
    pub top_k: usize,
}

/// Checks `x: [T, H]`, `w13: [E, 2·I, H]`, `w2: [E, H, I]`, `topk_ids: [T, k]` and
/// `topk_weights: [T, k]`.
pub(crate) fn expert_shapes(
    op: &'static str,
    x: &Tensor,
    w13: &Tensor,
    w2: &Tensor,
    topk_ids: &Tensor,
    topk_weights: &Tensor,
) -> Result<ExpertDims> {
    let (tokens, hidden) = dims2(op, "x", x)?;
    let (experts, rows13, cols13) = dims3(op, "w13", w13)?;
    if cols13 != hidden || rows13 % 2 != 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "w13 {:?} must be [experts, 2·intermediate, hidden] with hidden {hidden} (x is {:?})",
                w13.shape(),
                x.shape()
            ),
        });
    }
    let intermediate = rows13 / 2;
    expect_shape(op, w2, &[experts, hidden, intermediate])?;
    let (id_rows, top_k) = dims2(op, "topk_ids", topk_ids)?;
    expect_shape(op, topk_ids, &[tokens, top_k])?;
    expect_shape(op, topk_weights, &[id_rows, top_k])?;
    Ok(ExpertDims {
        tokens,
        hidden,
        experts,
        intermediate,
        top_k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros_cpu(shape, DType::F32)
    }

    #[test]
    fn top_k_must_fit_the_experts() {
        let logits = zeros(&[3, 4]);
        assert_eq!(route_shapes("t", &logits, 4).unwrap(), (3, 4));
        for bad in [0, 5] {
            assert!(matches!(
                route_shapes("t", &logits, bad),
                Err(KernelError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn expert_operands_must_agree() {
        let (x, w13, w2) = (zeros(&[3, 8]), zeros(&[4, 12, 8]), zeros(&[4, 8, 6]));
        let (ids, weights) = (zeros(&[3, 2]), zeros(&[3, 2]));
        let dims = expert_shapes("t", &x, &w13, &w2, &ids, &weights).unwrap();
        assert_eq!(
            dims,
            ExpertDims {
                tokens: 3,
                hidden: 8,
                experts: 4,
                intermediate: 6,
                top_k: 2
            }
        );
        // Odd gate/up rows, a wrong rank, a mismatched w2 and mismatched routing tensors.
        let odd = zeros(&[4, 11, 8]);
        assert!(matches!(
            expert_shapes("t", &x, &odd, &w2, &ids, &weights),
            Err(KernelError::Invalid { .. })
        ));
        assert!(matches!(
            expert_shapes("t", &x, &zeros(&[12, 8]), &w2, &ids, &weights),
            Err(KernelError::WrongRank { arg: "w13", .. })
        ));
        assert!(matches!(
            expert_shapes("t", &x, &w13, &zeros(&[4, 6, 8]), &ids, &weights),
            Err(KernelError::ShapeMismatch { .. })
        ));
        assert!(expert_shapes("t", &x, &w13, &w2, &zeros(&[2, 2]), &weights).is_err());
        assert!(expert_shapes("t", &x, &w13, &w2, &ids, &zeros(&[3, 1])).is_err());
    }
}
