//! The figures of one benchmark run, as text (`Display`, the lines `cargo xtask bench`
//! has always printed) and as JSON (`Serialize`, the `--json` schema).
//!
//! The `Total: {n}tok, Time: {t}s, Throughput: {x}tok/s` line is bench.py's and is
//! grepped by `target/gpu-check/run.sh`: keep its wording.

use std::fmt;

use serde::Serialize;

/// The figures of one run (also the `--json` schema).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub model: String,
    /// The linear weights' format: a block-quantized dtype (`int8_g32`, `int4_g32`,
    /// `fp8_g128`) when quantized, else the dtype the weights run in (`bf16`, ...).
    pub weights: String,
    /// The KV cache's element type (`bf16`, `f32`, `f8_e4m3`).
    pub kv_cache_dtype: String,
    /// Tokens the whole KV cache holds (blocks × block size).
    pub kv_cache_tokens: usize,
    pub num_seqs: usize,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub time_s: f64,
    /// bench.py's figure: output tokens / wall time.
    pub output_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub mean_decode_batch_size: f64,
    pub num_preemptions: u64,
    pub peak_kv_cache_used_fraction: f64,
    pub peak_rss_mib: Option<f64>,
    /// Decode batch sizes replayed through CUDA graphs (empty: eager).
    pub cuda_graph_batch_sizes: Vec<usize>,
    /// Where a decode step's time went, mean over the measured run's decode steps.
    pub decode_step: DecodeStepMs,
}

/// Mean milliseconds per decode step, split as [`crate::StepTimes`]: host work (scheduling,
/// inputs, postprocessing) and the forward pass with sampling (on a GPU: waiting on the
/// device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct DecodeStepMs {
    pub steps: u64,
    pub host: f64,
    pub schedule: f64,
    pub inputs: f64,
    pub postprocess: f64,
    pub forward: f64,
}

impl DecodeStepMs {
    /// The means of `total` (summed over `steps` decode steps).
    pub fn mean_of(total: &crate::StepTimes, steps: u64) -> Self {
        let per_step = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps.max(1) as f64;
        Self {
            steps,
            host: per_step(total.host()),
            schedule: per_step(total.schedule),
            inputs: per_step(total.inputs),
            postprocess: per_step(total.postprocess),
            forward: per_step(total.forward),
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device                {}", self.device)?;
        writeln!(f, "model                 {}", self.model)?;
        writeln!(f, "weights               {}", self.weights)?;
        writeln!(
            f,
            "KV cache              {}, {} tokens",
            self.kv_cache_dtype, self.kv_cache_tokens
        )?;
        writeln!(
            f,
            "workload              {} seqs, {} prompt tokens",
            self.num_seqs, self.prompt_tokens
        )?;
        writeln!(
            f,
            "Total: {}tok, Time: {:.2}s, Throughput: {:.2}tok/s",
            self.output_tokens, self.time_s, self.output_tokens_per_s
        )?;
        writeln!(
            f,
            "prefill               {:.1} tok/s",
            self.prefill_tokens_per_s
        )?;
        writeln!(
            f,
            "decode                {:.1} tok/s",
            self.decode_tokens_per_s
        )?;
        writeln!(
            f,
            "mean decode batch     {:.1}",
            self.mean_decode_batch_size
        )?;
        writeln!(f, "preemptions           {}", self.num_preemptions)?;
        writeln!(
            f,
            "peak KV-cache use     {:.1}%",
            100.0 * self.peak_kv_cache_used_fraction
        )?;
        match (
            self.cuda_graph_batch_sizes.first(),
            self.cuda_graph_batch_sizes.last(),
        ) {
            (Some(lo), Some(hi)) => writeln!(
                f,
                "CUDA graphs           {} batch sizes, {lo}..={hi}",
                self.cuda_graph_batch_sizes.len()
            )?,
            _ => writeln!(f, "CUDA graphs           off (eager)")?,
        }
        let step = &self.decode_step;
        writeln!(
            f,
            "decode step host      {:.3} ms (schedule {:.3}, inputs {:.3}, postprocess {:.3}; mean of {} steps)",
            step.host, step.schedule, step.inputs, step.postprocess, step.steps
        )?;
        writeln!(
            f,
            "decode step forward   {:.3} ms (forward pass and sampling; on a GPU, waiting on the device)",
            step.forward
        )?;
        if let Some(mib) = self.peak_rss_mib {
            writeln!(f, "peak memory (RSS)     {mib:.0} MiB")?;
        }
        Ok(())
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB; `None` elsewhere.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cuda_graph_batch_sizes: Vec<usize>, peak_rss_mib: Option<f64>) -> BenchReport {
        BenchReport {
            device: "cpu".into(),
            model: "configs/qwen3-0.6b.json".into(),
            weights: "int4_g32".into(),
            kv_cache_dtype: "f8_e4m3".into(),
            kv_cache_tokens: 37376,
            num_seqs: 32,
            prompt_tokens: 4567,
            output_tokens: 4321,
            time_s: 12.5,
            output_tokens_per_s: 350.0203,
            prefill_tokens_per_s: 1234.56,
            decode_tokens_per_s: 400.04,
            mean_decode_batch_size: 27.46,
            num_preemptions: 2,
            peak_kv_cache_used_fraction: 0.4567,
            peak_rss_mib,
            cuda_graph_batch_sizes,
            decode_step: DecodeStepMs {
                steps: 150,
                host: 0.4125,
                schedule: 0.1,
                inputs: 0.05,
                postprocess: 0.2625,
                forward: 24.5,
            },
        }
    }

    #[test]
    fn text_report_keeps_bench_py_total_line_and_layout() {
        let text = report(vec![], Some(3061.4)).to_string();
        let expected = "\
device                cpu
model                 configs/qwen3-0.6b.json
weights               int4_g32
KV cache              f8_e4m3, 37376 tokens
workload              32 seqs, 4567 prompt tokens
Total: 4321tok, Time: 12.50s, Throughput: 350.02tok/s
prefill               1234.6 tok/s
decode                400.0 tok/s
mean decode batch     27.5
preemptions           2
peak KV-cache use     45.7%
CUDA graphs           off (eager)
decode step host      0.412 ms (schedule 0.100, inputs 0.050, postprocess 0.263; mean of 150 steps)
decode step forward   24.500 ms (forward pass and sampling; on a GPU, waiting on the device)
peak memory (RSS)     3061 MiB
";
        assert_eq!(text, expected);
    }

    #[test]
    fn decode_step_means_divide_by_the_step_count() {
        use std::time::Duration;
        let total = crate::StepTimes {
            schedule: Duration::from_millis(2),
            inputs: Duration::from_millis(4),
            forward: Duration::from_millis(100),
            postprocess: Duration::from_millis(6),
        };
        let mean = DecodeStepMs::mean_of(&total, 4);
        assert_eq!(mean.steps, 4);
        assert!((mean.host - 3.0).abs() < 1e-9);
        assert!((mean.forward - 25.0).abs() < 1e-9);
        assert!((mean.postprocess - 1.5).abs() < 1e-9);
        // No decode step: zeros, not NaN.
        assert_eq!(
            DecodeStepMs::mean_of(&crate::StepTimes::default(), 0).host,
            0.0
        );
    }

    #[test]
    fn text_report_names_the_cuda_graph_range() {
        let text = report(vec![1, 2, 4, 8, 16], None).to_string();
        assert!(text.contains("CUDA graphs           5 batch sizes, 1..=16\n"));
        assert!(!text.contains("peak memory"));
    }

    #[test]
    fn json_report_has_every_field() {
        let json = serde_json::to_value(report(vec![1, 2], None)).unwrap();
        assert_eq!(json["output_tokens"], 4321);
        assert_eq!(json["prompt_tokens"], 4567);
        assert_eq!(json["cuda_graph_batch_sizes"], serde_json::json!([1, 2]));
        assert!(json["peak_rss_mib"].is_null());
        assert_eq!(json["decode_step"]["steps"], 150);
        assert_eq!(json["decode_step"]["forward"], 24.5);
        assert_eq!(json["weights"], "int4_g32");
        assert_eq!(json["kv_cache_dtype"], "f8_e4m3");
        assert_eq!(json["kv_cache_tokens"], 37376);
        assert_eq!(json.as_object().unwrap().len(), 18);
    }
}
