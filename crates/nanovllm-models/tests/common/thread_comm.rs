//! An in-process communicator for tensor-parallel tests: each rank is a thread.
//! (The same as `tp_qwen3.rs`'s; shared here so other TP tests need not copy it.)

use std::sync::{Arc, Barrier, Mutex};

use nanovllm_kernels::{Communicator, KernelError, Tensor};

/// Collectives over threads: each rank posts its tensor, waits for all, reads all in rank
/// order (so every rank computes bit-identical results), and waits again before the slots
/// can be reused.
#[derive(Debug)]
pub struct ThreadComm {
    pub rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world_size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Option<Tensor>>>,
}

impl ThreadComm {
    pub fn group(world_size: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            world_size,
            barrier: Barrier::new(world_size),
            slots: Mutex::new(vec![None; world_size]),
        });
        (0..world_size)
            .map(|rank| ThreadComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Posts `x`, then returns every rank's tensor in rank order.
    fn exchange(&self, x: &Tensor) -> Vec<Tensor> {
        self.shared.slots.lock().unwrap()[self.rank] = Some(x.clone());
        self.shared.barrier.wait();
        let all = self
            .shared
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.clone().unwrap())
            .collect();
        self.shared.barrier.wait();
        all
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world_size
    }
    fn all_reduce_sum(&self, x: &mut Tensor) -> Result<(), KernelError> {
        let all = self.exchange(x);
        let mut sum = vec![0f32; x.numel()];
        for t in &all {
            for (s, v) in sum.iter_mut().zip(t.to_vec_f32()?) {
                *s += v;
            }
        }
        *x = Tensor::from_f32(sum, x.shape())?;
        Ok(())
    }
    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        let all = self.exchange(x);
        let (rows, _) = x.dims2()?;
        let widths: Vec<usize> = all.iter().map(|t| t.shape()[1]).collect();
        let data: Vec<Vec<f32>> = all
            .iter()
            .map(|t| t.to_vec_f32())
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for r in 0..rows {
            for (d, &w) in data.iter().zip(&widths) {
                out.extend_from_slice(&d[r * w..(r + 1) * w]);
            }
        }
        Tensor::from_f32(out, &[rows, widths.iter().sum()])
    }
    fn broadcast(&self, x: &mut Tensor, root: usize) -> Result<(), KernelError> {
        *x = self.exchange(x).swap_remove(root);
        Ok(())
    }
    fn barrier(&self) -> Result<(), KernelError> {
        self.shared.barrier.wait();
        Ok(())
    }
}
