//! [`Metrics`]: the server's counters, gauges and latency histograms, rendered
//! as Prometheus text (`GET /metrics`).
//!
//! The HTTP layer counts responses by status code; the engine thread counts
//! tokens and finished sequences, observes the latencies, and after every
//! loop publishes the gauges (running / waiting sequences, KV-cache blocks).
//! Everything is atomics or short critical sections, so scraping never waits
//! for an engine step.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Upper bounds (seconds) of the time-per-output-token buckets.
const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default, Clone)]
struct HistogramState {
    /// `counts[i]`: observations in `(bounds[i-1], bounds[i]]`; the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                ..HistogramState::default()
            }),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.counts[slot] += 1;
        s.sum += seconds;
        s.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += s.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += s.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

/// How a sequence ended, for `nanovllm_request_finished_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FinishLabel {
    Stop,
    Length,
    Abort,
    Error,
}

impl FinishLabel {
    fn as_str(self) -> &'static str {
        match self {
            FinishLabel::Stop => "stop",
            FinishLabel::Length => "length",
            FinishLabel::Abort => "abort",
            FinishLabel::Error => "error",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    responses_by_status: Mutex<BTreeMap<u16, u64>>,
    finished_by_reason: Mutex<BTreeMap<FinishLabel, u64>>,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    num_running: AtomicUsize,
    num_waiting: AtomicUsize,
    kv_blocks_total: AtomicUsize,
    kv_blocks_free: AtomicUsize,
    /// False while the tensor-parallel group is broken (being rebuilt, or given up).
    engine_healthy: AtomicBool,
    tp_restarts: AtomicU64,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            responses_by_status: Mutex::default(),
            finished_by_reason: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            num_running: AtomicUsize::new(0),
            num_waiting: AtomicUsize::new(0),
            kv_blocks_total: AtomicUsize::new(0),
            kv_blocks_free: AtomicUsize::new(0),
            engine_healthy: AtomicBool::new(true),
            tp_restarts: AtomicU64::new(0),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            time_per_output_token: Histogram::new(TPOT_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn count_response(&self, status: u16) {
        *self
            .responses_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    pub fn count_finished(&self, label: FinishLabel) {
        *self
            .finished_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label)
            .or_default() += 1;
    }

    pub fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_generation_tokens(&self, n: usize) {
        self.generation_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.time_to_first_token.observe(d.as_secs_f64());
    }

    pub fn observe_tpot(&self, d: Duration) {
        self.time_per_output_token.observe(d.as_secs_f64());
    }

    /// The engine thread's view after a loop: sequences and KV-cache blocks.
    pub fn set_engine_gauges(
        &self,
        num_running: usize,
        num_waiting: usize,
        kv_blocks_total: usize,
        kv_blocks_free: usize,
    ) {
        self.num_running.store(num_running, Ordering::Relaxed);
        self.num_waiting.store(num_waiting, Ordering::Relaxed);
        self.kv_blocks_total
            .store(kv_blocks_total, Ordering::Relaxed);
        self.kv_blocks_free.store(kv_blocks_free, Ordering::Relaxed);
    }

    pub fn set_engine_healthy(&self, healthy: bool) {
        self.engine_healthy.store(healthy, Ordering::Relaxed);
    }

    /// One successful rebuild of a broken tensor-parallel group.
    pub fn count_tp_restart(&self) {
        self.tp_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };

        let _ = writeln!(
            out,
            "# HELP nanovllm_http_requests_total HTTP responses by status code.\n# TYPE nanovllm_http_requests_total counter"
        );
        for (status, n) in self
            .responses_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "nanovllm_http_requests_total{{status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP nanovllm_request_finished_total Finished sequences by finish reason.\n# TYPE nanovllm_request_finished_total counter"
        );
        let finished = self
            .finished_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for label in [
            FinishLabel::Stop,
            FinishLabel::Length,
            FinishLabel::Abort,
            FinishLabel::Error,
        ] {
            let n = finished.get(&label).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "nanovllm_request_finished_total{{finish_reason=\"{}\"}} {n}",
                label.as_str()
            );
        }
        counter(
            &mut out,
            "nanovllm_prompt_tokens_total",
            "Prompt tokens of accepted sequences.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "nanovllm_generation_tokens_total",
            "Generated tokens.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "nanovllm_num_requests_running",
            "Sequences in the running batch.",
            self.num_running.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "nanovllm_num_requests_waiting",
            "Sequences waiting to be scheduled.",
            self.num_waiting.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "nanovllm_engine_healthy",
            "1 while the engine serves; 0 while its tensor-parallel group is broken (see /health).",
            u8::from(self.engine_healthy.load(Ordering::Relaxed)).to_string(),
        );
        counter(
            &mut out,
            "nanovllm_tp_restarts_total",
            "Successful rebuilds of a broken tensor-parallel group.",
            self.tp_restarts.load(Ordering::Relaxed),
        );
        let total = self.kv_blocks_total.load(Ordering::Relaxed);
        let free = self.kv_blocks_free.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "nanovllm_kv_cache_blocks_total",
            "KV-cache blocks.",
            total.to_string(),
        );
        gauge(
            &mut out,
            "nanovllm_kv_cache_blocks_free",
            "KV-cache blocks held by no sequence.",
            free.to_string(),
        );
        let usage = if total == 0 {
            0.0
        } else {
            (total - free.min(total)) as f64 / total as f64
        };
        gauge(
            &mut out,
            "nanovllm_kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (1 = full).",
            usage.to_string(),
        );
        self.time_to_first_token.render(
            &mut out,
            "nanovllm_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
        );
        self.time_per_output_token.render(
            &mut out,
            "nanovllm_time_per_output_token_seconds",
            "Time between consecutive generated tokens of a sequence.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first line starting with `prefix` (a metric name with labels).
    fn value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{prefix} not in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for s in [0.0005, 0.003, 0.003, 0.5, 100.0] {
            m.observe_ttft(Duration::from_secs_f64(s));
        }
        let text = m.render();
        let name = "nanovllm_time_to_first_token_seconds";
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"0.001\"}}")), 1.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"0.005\"}}")), 3.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"0.5\"}}")), 4.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"80\"}}")), 4.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"+Inf\"}}")), 5.0);
        assert_eq!(value(&text, &format!("{name}_count")), 5.0);
        assert!((value(&text, &format!("{name}_sum")) - 100.5065).abs() < 1e-9);
    }

    #[test]
    fn counters_and_gauges_render() {
        let m = Metrics::default();
        m.count_response(200);
        m.count_response(200);
        m.count_response(400);
        m.count_finished(FinishLabel::Stop);
        m.add_prompt_tokens(7);
        m.add_generation_tokens(3);
        m.set_engine_gauges(2, 1, 10, 4);
        let text = m.render();
        assert_eq!(
            value(&text, "nanovllm_http_requests_total{status=\"200\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "nanovllm_http_requests_total{status=\"400\"}"),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "nanovllm_request_finished_total{finish_reason=\"stop\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "nanovllm_request_finished_total{finish_reason=\"abort\"}"
            ),
            0.0
        );
        assert_eq!(value(&text, "nanovllm_prompt_tokens_total"), 7.0);
        assert_eq!(value(&text, "nanovllm_generation_tokens_total"), 3.0);
        assert_eq!(value(&text, "nanovllm_num_requests_running"), 2.0);
        assert_eq!(value(&text, "nanovllm_num_requests_waiting"), 1.0);
        assert_eq!(value(&text, "nanovllm_kv_cache_blocks_total"), 10.0);
        assert_eq!(value(&text, "nanovllm_kv_cache_blocks_free"), 4.0);
        assert_eq!(value(&text, "nanovllm_kv_cache_usage_perc"), 0.6);
        assert_eq!(value(&text, "nanovllm_engine_healthy"), 1.0);
        assert_eq!(value(&text, "nanovllm_tp_restarts_total"), 0.0);
        m.set_engine_healthy(false);
        m.count_tp_restart();
        let text = m.render();
        assert_eq!(value(&text, "nanovllm_engine_healthy"), 0.0);
        assert_eq!(value(&text, "nanovllm_tp_restarts_total"), 1.0);
    }
}
