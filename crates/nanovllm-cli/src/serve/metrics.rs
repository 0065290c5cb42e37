//! [`Metrics`]: the server's counters, gauges and latency histograms, rendered
//! as Prometheus text (`GET /metrics`).
//!
//! The HTTP layer counts responses by status code; the engine thread counts
//! tokens and finished sequences, observes the latencies, and after every
//! loop publishes the gauges (running / waiting sequences, KV-cache blocks).
//! Everything is atomics or short critical sections, so scraping never waits
//! for an engine step.
//!
//! Two sets of names: the server's own (`nanovllm_*`), and vLLM's (`vllm:*`, with its
//! `model_name` label and its histogram buckets) so that dashboards built for vLLM work
//! unchanged. The text is Prometheus' exposition format: each family once, its `# HELP`
//! and `# TYPE` lines first; a histogram's buckets cumulative and ending at `+Inf`, which
//! equals its `_count`.

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

/// vLLM's time-to-first-token buckets (seconds).
const VLLM_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's time-per-output-token buckets (seconds).
const VLLM_TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request-latency buckets (seconds), of `vllm:e2e_request_latency_seconds`.
const VLLM_REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
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

    /// The family's lines; `labels` (`key="value",...`, escaped, or empty) go on every
    /// sample.
    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let le_prefix = if labels.is_empty() {
            String::new()
        } else {
            format!("{labels},")
        };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += s.counts[i];
            let _ = writeln!(
                out,
                "{name}_bucket{{{le_prefix}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += s.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{{le_prefix}le=\"+Inf\"}} {cumulative}");
        let braces = braced(labels);
        let _ = writeln!(out, "{name}_sum{braces} {}", s.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", s.count);
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
    pub fn as_str(self) -> &'static str {
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
    /// `model_name="..."`, escaped: the label vLLM puts on its `vllm:*` samples.
    model_label: String,
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
    vllm_time_to_first_token: Histogram,
    vllm_time_per_output_token: Histogram,
    vllm_e2e_request_latency: Histogram,
}

impl Metrics {
    /// Empty metrics of a server whose clients ask for `model_name`.
    pub fn new(model_name: &str) -> Self {
        Self {
            model_label: format!("model_name=\"{}\"", escape_label_value(model_name)),
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
            vllm_time_to_first_token: Histogram::new(VLLM_TTFT_BUCKETS),
            vllm_time_per_output_token: Histogram::new(VLLM_TPOT_BUCKETS),
            vllm_e2e_request_latency: Histogram::new(VLLM_REQUEST_LATENCY_BUCKETS),
        }
    }

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

    /// `(prompt tokens, generated tokens)` counted so far.
    pub fn token_totals(&self) -> (u64, u64) {
        (
            self.prompt_tokens.load(Ordering::Relaxed),
            self.generation_tokens.load(Ordering::Relaxed),
        )
    }

    pub fn add_generation_tokens(&self, n: usize) {
        self.generation_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.time_to_first_token.observe(d.as_secs_f64());
        self.vllm_time_to_first_token.observe(d.as_secs_f64());
    }

    pub fn observe_tpot(&self, d: Duration) {
        self.time_per_output_token.observe(d.as_secs_f64());
        self.vllm_time_per_output_token.observe(d.as_secs_f64());
    }

    /// A sequence finished (however it ended), `d` after it arrived.
    pub fn observe_e2e(&self, d: Duration) {
        self.vllm_e2e_request_latency.observe(d.as_secs_f64());
    }

    /// Fraction of KV-cache blocks in use (0 without blocks).
    pub fn kv_cache_usage(&self) -> f64 {
        let total = self.kv_blocks_total.load(Ordering::Relaxed);
        let free = self.kv_blocks_free.load(Ordering::Relaxed);
        if total == 0 {
            0.0
        } else {
            (total - free.min(total)) as f64 / total as f64
        }
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
        let usage = self.kv_cache_usage();
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
            "",
        );
        self.time_per_output_token.render(
            &mut out,
            "nanovllm_time_per_output_token_seconds",
            "Time between consecutive generated tokens of a sequence.",
            "",
        );
        self.render_vllm(&mut out, usage);
        out
    }

    /// vLLM's families, each sample labelled with `model_name`.
    fn render_vllm(&self, out: &mut String, kv_usage: f64) {
        let label = &self.model_label;
        let mut family = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {value}"
            );
        };
        family(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            self.num_running.load(Ordering::Relaxed).to_string(),
        );
        family(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            self.num_waiting.load(Ordering::Relaxed).to_string(),
        );
        family(
            "vllm:gpu_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage (on the CPU too: the name is vLLM's).",
            kv_usage.to_string(),
        );
        family(
            "vllm:prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted sequences.",
            self.prompt_tokens.load(Ordering::Relaxed).to_string(),
        );
        family(
            "vllm:generation_tokens_total",
            "counter",
            "Generated tokens.",
            self.generation_tokens.load(Ordering::Relaxed).to_string(),
        );
        self.vllm_time_to_first_token.render(
            out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            label,
        );
        self.vllm_time_per_output_token.render(
            out,
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            label,
        );
        self.vllm_e2e_request_latency.render(
            out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            label,
        );
    }
}

/// `{labels}`, or nothing without labels.
fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A label value as the exposition format quotes it: `\`, `"` and newlines escaped.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        let m = Metrics::new("tiny");
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
        let m = Metrics::new("tiny");
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

    /// Checks `text` against the exposition format as Prometheus parses it, and returns
    /// each family's type: every line a `# HELP`, a `# TYPE` or a sample; each family
    /// once, HELP then TYPE before its samples; names and labels well formed; values
    /// numbers; a histogram's buckets labelled `le`, cumulative, ending at `+Inf` equal to
    /// its `_count`, with a `_sum`.
    fn parse_exposition(text: &str) -> BTreeMap<String, String> {
        fn valid_name(name: &str) -> bool {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        /// `key="value",...` into pairs (escapes `\\`, `\"`, `\n` only).
        fn parse_labels(labels: &str) -> Vec<(String, String)> {
            let mut pairs = Vec::new();
            let mut rest = labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").expect("key=\"value\"");
                assert!(valid_name(key) && !key.contains(':'), "label name {key:?}");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("a closing quote") {
                        (_, '\\') => match chars.next().expect("an escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c}"),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                pairs.push((key.to_owned(), value));
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            pairs
        }
        let mut types = BTreeMap::new();
        let mut family: Option<(String, String)> = None;
        let mut help_for: Option<String> = None;
        let mut buckets: Vec<(String, f64)> = Vec::new();
        let finish = |family: &Option<(String, String)>, buckets: &mut Vec<(String, f64)>| {
            if let Some((name, kind)) = family {
                if kind == "histogram" {
                    assert_eq!(buckets.last().map(|b| b.0.as_str()), Some("+Inf"), "{name}");
                    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}");
                }
            }
            buckets.clear();
        };
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        let mut inf: BTreeMap<String, f64> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP name text");
                assert!(valid_name(name), "{line}");
                assert!(!types.contains_key(name), "family {name} twice");
                finish(&family, &mut buckets);
                family = None;
                help_for = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(help_for.as_deref(), Some(name), "TYPE without HELP: {line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                types.insert(name.to_owned(), kind.to_owned());
                family = Some((name.to_owned(), kind.to_owned()));
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let (series, value) = line.rsplit_once(' ').expect("name value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => {
                        (name, parse_labels(labels.strip_suffix('}').expect("}")))
                    }
                    None => (series, Vec::new()),
                };
                let (fam, kind) = family.as_ref().expect("a sample after its TYPE");
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.clone());
                if kind == "histogram" {
                    let suffix = name.strip_prefix(fam.as_str()).expect("the family's name");
                    match suffix {
                        "_bucket" => {
                            let le = le.expect("a bucket's le");
                            if le == "+Inf" {
                                inf.insert(fam.clone(), value);
                            } else {
                                le.parse::<f64>().expect("le a number");
                            }
                            buckets.push((le, value));
                        }
                        "_count" => {
                            counts.insert(fam.clone(), value);
                        }
                        "_sum" => {}
                        other => panic!("{fam}{other} in a histogram"),
                    }
                } else {
                    assert_eq!(name, fam, "a sample of another family");
                }
            }
        }
        finish(&family, &mut buckets);
        for (name, kind) in &types {
            if kind == "histogram" {
                assert_eq!(inf.get(name), counts.get(name), "{name}: +Inf vs _count");
                assert!(counts.contains_key(name), "{name} has no _count");
            }
        }
        types
    }

    #[test]
    fn the_exposition_parses_and_has_vllm_names() {
        let m = Metrics::new("qwen \"tiny\"\\x");
        m.observe_ttft(Duration::from_millis(30));
        m.observe_tpot(Duration::from_millis(12));
        m.observe_e2e(Duration::from_millis(900));
        m.add_prompt_tokens(5);
        m.add_generation_tokens(4);
        m.set_engine_gauges(1, 2, 8, 2);
        m.count_response(200);
        m.count_finished(FinishLabel::Length);
        let text = m.render();
        let types = parse_exposition(&text);
        for (name, kind) in [
            ("vllm:num_requests_running", "gauge"),
            ("vllm:num_requests_waiting", "gauge"),
            ("vllm:gpu_cache_usage_perc", "gauge"),
            ("vllm:prompt_tokens_total", "counter"),
            ("vllm:generation_tokens_total", "counter"),
            ("vllm:time_to_first_token_seconds", "histogram"),
            ("vllm:time_per_output_token_seconds", "histogram"),
            ("vllm:e2e_request_latency_seconds", "histogram"),
            ("nanovllm_time_to_first_token_seconds", "histogram"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        let label = r#"model_name="qwen \"tiny\"\\x""#;
        assert_eq!(
            value(&text, &format!("vllm:num_requests_running{{{label}}}")),
            1.0
        );
        assert_eq!(
            value(&text, &format!("vllm:num_requests_waiting{{{label}}}")),
            2.0
        );
        assert_eq!(
            value(&text, &format!("vllm:gpu_cache_usage_perc{{{label}}}")),
            0.75
        );
        assert_eq!(
            value(&text, &format!("vllm:prompt_tokens_total{{{label}}}")),
            5.0
        );
        assert_eq!(
            value(&text, &format!("vllm:generation_tokens_total{{{label}}}")),
            4.0
        );
        let ttft = "vllm:time_to_first_token_seconds_bucket";
        assert_eq!(value(&text, &format!("{ttft}{{{label},le=\"0.02\"}}")), 0.0);
        assert_eq!(value(&text, &format!("{ttft}{{{label},le=\"0.04\"}}")), 1.0);
        assert_eq!(value(&text, &format!("{ttft}{{{label},le=\"2560\"}}")), 1.0);
        let e2e = "vllm:e2e_request_latency_seconds";
        assert_eq!(
            value(&text, &format!("{e2e}_bucket{{{label},le=\"0.8\"}}")),
            0.0
        );
        assert_eq!(
            value(&text, &format!("{e2e}_bucket{{{label},le=\"1\"}}")),
            1.0
        );
        assert_eq!(value(&text, &format!("{e2e}_count{{{label}}}")), 1.0);
        assert!((value(&text, &format!("{e2e}_sum{{{label}}}")) - 0.9).abs() < 1e-9);
        // vLLM's TPOT buckets start at 10 ms: 12 ms is in the second.
        let tpot = "vllm:time_per_output_token_seconds_bucket";
        assert_eq!(value(&text, &format!("{tpot}{{{label},le=\"0.01\"}}")), 0.0);
        assert_eq!(
            value(&text, &format!("{tpot}{{{label},le=\"0.025\"}}")),
            1.0
        );
    }

    #[test]
    #[should_panic(expected = "+Inf vs _count")]
    fn the_exposition_check_can_fail() {
        parse_exposition(
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        );
    }
}
