//! The figures of `nanovllm bench serve`, computed from each request's timings the way
//! `vllm bench serve` computes them:
//! - TTFT: from sending the request to the first chunk that carries text;
//! - TPOT: per request, `(e2e − TTFT) / (output tokens − 1)`, over requests with ≥ 2 tokens;
//! - ITL: every gap between consecutive text chunks, over all requests;
//! - E2EL: from sending the request to the end of its response.
//!
//! Throughputs divide by the wall time of the whole run. Percentiles interpolate
//! linearly between order statistics (numpy's default), so they are comparable with
//! vLLM's. Failed requests count only in `failed`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What one request measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOutcome {
    /// `None` on success; the reason otherwise.
    pub error: Option<String>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub ttft: Duration,
    /// Gaps between consecutive text chunks.
    pub itl: Vec<Duration>,
    pub e2e: Duration,
}

/// Mean and percentiles of one latency, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyMs {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServeBenchReport {
    pub base_url: String,
    pub endpoint: String,
    pub model: String,
    /// Requests per second asked for (`null`: all at once).
    pub request_rate: Option<f64>,
    pub max_concurrency: Option<usize>,
    pub completed: usize,
    pub failed: usize,
    /// The first failure's reason, if any failed.
    pub first_error: Option<String>,
    pub duration_s: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: LatencyMs,
    pub tpot_ms: LatencyMs,
    pub itl_ms: LatencyMs,
    pub e2el_ms: LatencyMs,
}

/// Where the run was aimed and how it was paced (the report's header).
pub struct RunInfo {
    pub base_url: String,
    pub endpoint: String,
    pub model: String,
    pub request_rate: Option<f64>,
    pub max_concurrency: Option<usize>,
}

impl ServeBenchReport {
    pub fn new(info: RunInfo, outcomes: &[RequestOutcome], duration: Duration) -> Self {
        let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
        let secs = duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let total_input_tokens = ok.iter().map(|o| o.prompt_tokens).sum::<usize>();
        let total_output_tokens = ok.iter().map(|o| o.output_tokens).sum::<usize>();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let ttft: Vec<f64> = ok.iter().map(|o| ms(&o.ttft)).collect();
        let tpot: Vec<f64> = ok
            .iter()
            .filter(|o| o.output_tokens > 1)
            .map(|o| ms(&o.e2e.saturating_sub(o.ttft)) / (o.output_tokens - 1) as f64)
            .collect();
        let itl: Vec<f64> = ok.iter().flat_map(|o| o.itl.iter().map(ms)).collect();
        let e2el: Vec<f64> = ok.iter().map(|o| ms(&o.e2e)).collect();
        Self {
            base_url: info.base_url,
            endpoint: info.endpoint,
            model: info.model,
            request_rate: info.request_rate,
            max_concurrency: info.max_concurrency,
            completed: ok.len(),
            failed: outcomes.len() - ok.len(),
            first_error: outcomes.iter().find_map(|o| o.error.clone()),
            duration_s: secs,
            total_input_tokens,
            total_output_tokens,
            request_throughput: ok.len() as f64 / secs,
            output_throughput: total_output_tokens as f64 / secs,
            total_token_throughput: (total_input_tokens + total_output_tokens) as f64 / secs,
            ttft_ms: LatencyMs::of(ttft),
            tpot_ms: LatencyMs::of(tpot),
            itl_ms: LatencyMs::of(itl),
            e2el_ms: LatencyMs::of(e2el),
        }
    }
}

impl LatencyMs {
    /// Zeros for an empty sample (no request succeeded, or none had two tokens).
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let mean = if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        };
        Self {
            mean,
            p50: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
            p99: percentile(&values, 99.0),
        }
    }
}

/// The `q`-th percentile of sorted `values`, interpolated linearly between the two
/// nearest ranks (numpy's default method); 0 for an empty slice.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = q / 100.0 * (n - 1) as f64;
            let low = rank.floor() as usize;
            let high = rank.ceil() as usize;
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        }
    }
}

impl fmt::Display for ServeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.request_rate {
            Some(r) => format!("{r}"),
            None => "inf".into(),
        };
        let concurrency = match self.max_concurrency {
            Some(c) => c.to_string(),
            None => "unbounded".into(),
        };
        writeln!(f, "{:=^50}", " Serving Benchmark Result ")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, value: String| {
            writeln!(f, "{name:<40}{value:>10}")
        };
        row(f, "Request rate (req/s):", rate)?;
        row(f, "Maximum concurrency:", concurrency)?;
        row(f, "Successful requests:", self.completed.to_string())?;
        row(f, "Failed requests:", self.failed.to_string())?;
        row(
            f,
            "Benchmark duration (s):",
            format!("{:.2}", self.duration_s),
        )?;
        row(
            f,
            "Total input tokens:",
            self.total_input_tokens.to_string(),
        )?;
        row(
            f,
            "Total generated tokens:",
            self.total_output_tokens.to_string(),
        )?;
        row(
            f,
            "Request throughput (req/s):",
            format!("{:.2}", self.request_throughput),
        )?;
        row(
            f,
            "Output token throughput (tok/s):",
            format!("{:.2}", self.output_throughput),
        )?;
        row(
            f,
            "Total token throughput (tok/s):",
            format!("{:.2}", self.total_token_throughput),
        )?;
        for (title, name, latency) in [
            ("Time to First Token", "TTFT", &self.ttft_ms),
            (
                "Time per Output Token (excl. 1st token)",
                "TPOT",
                &self.tpot_ms,
            ),
            ("Inter-token Latency", "ITL", &self.itl_ms),
            ("End-to-end Latency", "E2EL", &self.e2el_ms),
        ] {
            writeln!(f, "{:-^50}", format!(" {title} "))?;
            for (stat, value) in [
                ("Mean", latency.mean),
                ("P50", latency.p50),
                ("P90", latency.p90),
                ("P99", latency.p99),
            ] {
                row(f, &format!("{stat} {name} (ms):"), format!("{value:.2}"))?;
            }
        }
        writeln!(f, "{}", "=".repeat(50))?;
        if let Some(err) = &self.first_error {
            writeln!(f, "first failure: {err}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn info() -> RunInfo {
        RunInfo {
            base_url: "http://127.0.0.1:8000".into(),
            endpoint: "/v1/completions".into(),
            model: "m".into(),
            request_rate: None,
            max_concurrency: Some(2),
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [50, 90, 99]) = [2.5, 3.7, 3.97].
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn figures_follow_vllm_definitions() {
        let outcomes = [
            RequestOutcome {
                prompt_tokens: 10,
                output_tokens: 5,
                ttft: ms(100),
                itl: vec![ms(10), ms(20), ms(30), ms(40)],
                e2e: ms(200),
                ..Default::default()
            },
            RequestOutcome {
                prompt_tokens: 20,
                output_tokens: 1,
                ttft: ms(300),
                itl: vec![],
                e2e: ms(300),
                ..Default::default()
            },
            RequestOutcome {
                error: Some("HTTP 500: boom".into()),
                prompt_tokens: 99,
                output_tokens: 99,
                ..Default::default()
            },
        ];
        let r = ServeBenchReport::new(info(), &outcomes, Duration::from_secs(2));
        assert_eq!((r.completed, r.failed), (2, 1));
        assert_eq!(r.first_error.as_deref(), Some("HTTP 500: boom"));
        assert_eq!((r.total_input_tokens, r.total_output_tokens), (30, 6));
        assert_eq!(r.request_throughput, 1.0);
        assert_eq!(r.output_throughput, 3.0);
        assert_eq!(r.total_token_throughput, 18.0);
        assert!((r.ttft_ms.mean - 200.0).abs() < 1e-9);
        // Only the 5-token request has a TPOT: (200 − 100) / 4.
        assert!((r.tpot_ms.mean - 25.0).abs() < 1e-9);
        assert!((r.itl_ms.mean - 25.0).abs() < 1e-9);
        assert!((r.itl_ms.p50 - 25.0).abs() < 1e-9);
        assert!((r.e2el_ms.p99 - 299.0).abs() < 1e-9);
        let text = r.to_string();
        for needle in [
            "Successful requests:",
            "Mean TTFT (ms):",
            "P99 ITL (ms):",
            "boom",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }
}
