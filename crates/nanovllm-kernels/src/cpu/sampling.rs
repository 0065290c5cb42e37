//! PLACEHOLDER (being written): the CPU implementation of `Backend::sample`.

use crate::error::{KernelError, Result};
use crate::sampling::{SampleOutput, SamplingRow};
use crate::tensor::Tensor;

pub(super) fn sample(_logits: Tensor, _rows: &[SamplingRow<'_>]) -> Result<SampleOutput> {
    Err(KernelError::Invalid {
        op: "sample",
        msg: "not implemented yet".into(),
    })
}
