//! Golden engine tests for Mixtral: greedy continuations of the tiny Mixtral fixtures
//! through `LLM` must equal transformers' (scenarios in `common/mod.rs`), however the
//! engine batches, chunks, caches or preempts the work. The engine knows nothing of
//! experts: it loads the model through the registry like any other.
//!
//! Every greedy step of the references has a top-1/top-2 logit margin ≥ 5.9e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;

const FIXTURES: [&str; 2] = ["mixtral-tiny", "mixtral-tiny-bf16"];

#[test]
fn fixtures_are_mixtral() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "MixtralForCausalLM");
    }
}

engine_scenarios!(FIXTURES, FIXTURES);
