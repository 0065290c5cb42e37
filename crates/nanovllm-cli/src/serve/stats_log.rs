//! The server's periodic log line, as vLLM prints it every ten seconds while it works:
//!
//! ```text
//! Avg prompt throughput: 412.3 tokens/s, Avg generation throughput: 96.0 tokens/s, Running: 4 reqs, Waiting: 0 reqs, KV cache usage: 12.5%
//! ```
//!
//! Throughputs are the engine's prefill and decode token counters ([`EngineStats`]) over
//! the wall time since the previous line. A line is due every [`INTERVAL`] while there was
//! work in the interval (tokens computed, or requests running or waiting), plus one more
//! after the work stops, so the last interval is reported and the throughputs fall to
//! zero; an idle server logs nothing. The engine thread asks [`ThroughputLog::due_in`] how
//! long it may sleep while idle, so that last line is not held back until the next
//! request.

use std::time::{Duration, Instant};

use nanovllm_core::EngineStats;

/// Time between two lines.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What the engine looks like at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    pub stats: EngineStats,
    pub num_running: usize,
    pub num_waiting: usize,
    /// Fraction of KV-cache blocks in use.
    pub kv_cache_usage: f64,
}

impl Snapshot {
    fn busy(&self) -> bool {
        self.num_running > 0 || self.num_waiting > 0
    }
}

/// The state between two lines.
#[derive(Debug)]
pub struct ThroughputLog {
    last_at: Instant,
    last_stats: EngineStats,
    /// Whether the interval since `last_at` saw work (so a line is owed for it).
    active: bool,
}

impl ThroughputLog {
    /// Starts counting at `now` from the engine's counters `stats`.
    pub fn new(now: Instant, stats: EngineStats) -> Self {
        Self {
            last_at: now,
            last_stats: stats,
            active: false,
        }
    }

    /// Called every engine-loop turn; returns the line when one is due.
    pub fn tick(&mut self, now: Instant, snapshot: &Snapshot) -> Option<String> {
        let computed = snapshot.stats.since(&self.last_stats);
        self.active |=
            snapshot.busy() || computed.num_prefill_tokens > 0 || computed.num_decode_tokens > 0;
        let elapsed = now.saturating_duration_since(self.last_at);
        if !self.active || elapsed < INTERVAL {
            return None;
        }
        let seconds = elapsed.as_secs_f64();
        let line = format!(
            "Avg prompt throughput: {:.1} tokens/s, Avg generation throughput: {:.1} tokens/s, \
             Running: {} reqs, Waiting: {} reqs, KV cache usage: {:.1}%",
            computed.num_prefill_tokens as f64 / seconds,
            computed.num_decode_tokens as f64 / seconds,
            snapshot.num_running,
            snapshot.num_waiting,
            100.0 * snapshot.kv_cache_usage
        );
        self.last_at = now;
        self.last_stats = snapshot.stats;
        // Work still under way owes the next line; otherwise this was the last one.
        self.active = snapshot.busy();
        Some(line)
    }

    /// While the engine is idle: how long until a line is due (`None`: none is owed).
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.active
            .then(|| (self.last_at + INTERVAL).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(prefill: u64, decode: u64, running: usize, waiting: usize) -> Snapshot {
        Snapshot {
            stats: EngineStats {
                num_prefill_tokens: prefill,
                num_decode_tokens: decode,
                ..EngineStats::default()
            },
            num_running: running,
            num_waiting: waiting,
            kv_cache_usage: 0.125,
        }
    }

    #[test]
    fn a_line_every_interval_while_busy_then_one_more_then_silence() {
        let t0 = Instant::now();
        let mut log = ThroughputLog::new(t0, EngineStats::default());
        assert_eq!(log.tick(t0, &snapshot(0, 0, 0, 0)), None);
        assert_eq!(log.due_in(t0), None, "idle from the start: nothing owed");

        // Work starts; nothing before the interval has passed.
        let busy = snapshot(1000, 50, 4, 1);
        assert_eq!(log.tick(t0 + Duration::from_secs(3), &busy), None);
        let line = log.tick(t0 + INTERVAL, &busy).expect("a line after 10 s");
        assert_eq!(
            line,
            "Avg prompt throughput: 100.0 tokens/s, Avg generation throughput: 5.0 tokens/s, \
             Running: 4 reqs, Waiting: 1 reqs, KV cache usage: 12.5%"
        );

        // The work ends within the next interval: one more line, due when it is up.
        let done = snapshot(1000, 250, 0, 0);
        assert_eq!(
            log.tick(t0 + INTERVAL + Duration::from_secs(1), &done),
            None
        );
        assert_eq!(
            log.due_in(t0 + INTERVAL + Duration::from_secs(1)),
            Some(Duration::from_secs(9))
        );
        let line = log.tick(t0 + 2 * INTERVAL, &done).expect("the last line");
        assert!(
            line.starts_with("Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 20.0 tokens/s, Running: 0 reqs"),
            "{line}"
        );

        // Idle: no more lines, and nothing to wake up for.
        assert_eq!(log.due_in(t0 + 2 * INTERVAL), None);
        assert_eq!(log.tick(t0 + 5 * INTERVAL, &done), None);
    }
}
