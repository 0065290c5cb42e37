//! End-to-end tests of `nanovllm perplexity` on `fixtures/qwen3-trained` (a small Qwen3
//! trained on this repository's text) and its held-out `eval.jsonl` (24 lines, 5585 scored
//! tokens), against `reference_perplexity.json`: transformers' perplexity of the saved bf16
//! weights loaded back in f32.
//!
//! Tolerance 1e-4 relative (the issue's), on the perplexity and on each line's `nll_sum`: the
//! engine runs f32 activations over the bf16 weights, as the reference does, with the CPU's
//! default bf16 KV cache, whose rounding of keys and values moves the perplexity by ~1e-5
//! relative (the figures are in each test). Chunked prefill and prefix caching may only
//! reorder the same f32 math: the same tolerance.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The CPU, 256-token blocks, room for every eval line at once (24 × ≤ 256 tokens, twice).
const ENGINE: [&str; 6] = [
    "--device",
    "cpu",
    "--block-size",
    "256",
    "--num-kvcache-blocks",
    "64",
];

fn trained() -> PathBuf {
    fixture("qwen3-trained")
}

fn reference() -> Value {
    let path = trained().join("reference_perplexity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `nanovllm perplexity --model qwen3-trained --input <input> <ENGINE> <extra>`.
fn perplexity(input: &Path, extra: &[&str]) -> std::process::Output {
    let model = trained();
    let args = [
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    nanovllm(&[&args[..], &ENGINE, extra].concat())
}

/// The `--json` report of a successful run.
fn perplexity_json(input: &Path, extra: &[&str]) -> Value {
    let out = perplexity(input, &[&["--json"][..], extra].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Within `TOLERANCE` relative.
fn assert_close(what: &str, got: f64, want: f64) {
    assert_within(TOLERANCE, what, got, want);
}

/// The tolerance.
const TOLERANCE: f64 = 1e-4;

fn assert_within(tolerance: f64, what: &str, got: f64, want: f64) {
    let rel = ((got - want) / want).abs();
    assert!(
        rel <= tolerance,
        "{what}: {got} vs {want} (relative {rel:.2e} > {tolerance:.0e})"
    );
}

/// Each of `report`'s lines against the reference's line `i % 24` (an input may repeat
/// the eval set), within [`TOLERANCE`].
fn assert_lines_match_the_reference(report: &Value) {
    assert_lines_within(TOLERANCE, report);
}

fn assert_lines_within(tolerance: f64, report: &Value) {
    let reference = reference();
    let want = reference["lines"].as_array().unwrap();
    for (i, line) in report["line_scores"].as_array().unwrap().iter().enumerate() {
        let r = &want[i % want.len()];
        assert_eq!(line["tokens"], r["tokens"], "line {i}");
        assert_within(
            tolerance,
            &format!("line {i} nll_sum"),
            line["nll_sum"].as_f64().unwrap(),
            r["nll_sum"].as_f64().unwrap(),
        );
    }
}

/// With the default bf16 KV cache, measured: 126.43467 against transformers' 126.43664
/// (relative 1.6e-5; lines within 5.4e-5). With an f32 cache the math is the reference's:
/// 126.436636 (relative 4.9e-9, lines within 4e-8), held to 1e-6.
#[test]
fn the_trained_fixture_scores_transformers_perplexity() {
    let eval = trained().join("eval.jsonl");
    let reference = reference();
    let report = perplexity_json(&eval, &[]);
    assert_eq!(report["tokens"], 5585);
    assert_eq!(report["lines"], 24);
    assert_close(
        "perplexity",
        report["perplexity"].as_f64().unwrap(),
        reference["perplexity"].as_f64().unwrap(),
    );
    let nll_sum = report["nll_sum"].as_f64().unwrap();
    assert!((report["perplexity"].as_f64().unwrap() - (nll_sum / 5585.0).exp()).abs() < 1e-9);
    assert_lines_match_the_reference(&report);
    assert_eq!(report["line_scores"][23]["line"], 24);

    let f32_cache = perplexity_json(&eval, &["--kv-cache-dtype", "f32"]);
    assert_within(
        1e-6,
        "perplexity, f32 KV cache",
        f32_cache["perplexity"].as_f64().unwrap(),
        reference["perplexity"].as_f64().unwrap(),
    );
    assert_lines_within(1e-6, &f32_cache);

    // The text report: one line on stdout.
    let out = perplexity(&eval, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "perplexity {:.4} over 5585 tokens (24 lines)\n",
        report["perplexity"].as_f64().unwrap()
    );
    assert_eq!(text, want);
}

/// Chunks of 64 tokens (every line is prefilled in 2..4 chunks, batched with others).
#[test]
fn chunked_prefill_does_not_change_the_perplexity() {
    let eval = trained().join("eval.jsonl");
    let report = perplexity_json(&eval, &["--max-num-batched-tokens", "64"]);
    assert_eq!(report["tokens"], 5585);
    assert_close(
        "perplexity",
        report["perplexity"].as_f64().unwrap(),
        reference()["perplexity"].as_f64().unwrap(),
    );
    assert_lines_match_the_reference(&report);
}

/// The eval set twice in one input, with prefix caching on (the default): the second copy
/// of each line shares all of its tokens with the first, which must not be read from the
/// cache (every row must be computed to be scored). Then the same input with prefix
/// caching off.
#[test]
fn prefix_caching_does_not_change_the_perplexity() {
    let dir = scratch("ppl-twice");
    let eval = std::fs::read_to_string(trained().join("eval.jsonl")).unwrap();
    let input = dir.join("twice.jsonl");
    std::fs::write(&input, format!("{eval}{eval}")).unwrap();
    let want = reference()["perplexity"].as_f64().unwrap();
    for flag in ["--enable-prefix-caching", "--no-enable-prefix-caching"] {
        let report = perplexity_json(&input, &[flag]);
        assert_eq!(
            (&report["tokens"], &report["lines"]),
            (&Value::from(11170), &Value::from(48))
        );
        assert_close(flag, report["perplexity"].as_f64().unwrap(), want);
        assert_lines_match_the_reference(&report);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A text line is tokenized by the model's tokenizer (no special token added, as the
/// fixture script's `tokenizer.encode(text)`): it scores as its token ids do.
#[test]
fn a_text_line_scores_as_its_token_ids() {
    let dir = scratch("ppl-text");
    let text = "The scheduler admits waiting sequences while the KV cache has free blocks.";
    let tokenizer = nanovllm_core::Tokenizer::from_dir(&trained()).unwrap();
    let ids = tokenizer.encode(text).unwrap();
    let input = dir.join("text.jsonl");
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n",
            serde_json::json!({ "text": text }),
            serde_json::json!({ "prompt_token_ids": ids, "file": "ignored" })
        ),
    )
    .unwrap();
    let report = perplexity_json(&input, &[]);
    let lines = report["line_scores"].as_array().unwrap();
    assert_eq!(lines[0]["tokens"], ids.len());
    assert_eq!(lines[1]["tokens"], ids.len());
    let (a, b) = (
        lines[0]["nll_sum"].as_f64().unwrap(),
        lines[1]["nll_sum"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad lines are named by line number, all together, and nothing is scored: malformed
/// lines before the model loads, then lines the engine refuses.
#[test]
fn bad_lines_are_named_by_number_and_nothing_is_scored() {
    let dir = scratch("ppl-bad");
    let input = dir.join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"prompt_token_ids\": [1, 2, 3]}\n\n{not json\n{\"prompt\": \"hi\"}\n",
    )
    .unwrap();
    let out = perplexity(&input, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("2 bad line(s), nothing was scored"), "{err}");
    assert!(err.contains("line 3: invalid JSON"), "{err}");
    assert!(
        err.contains("line 4: missing \"prompt_token_ids\""),
        "{err}"
    );

    std::fs::write(
        &input,
        "{\"prompt_token_ids\": [1, 2, 3]}\n{\"prompt_token_ids\": [5, 99999]}\n\
         {\"prompt_token_ids\": [7]}\n{\"text\": \"\"}\n",
    )
    .unwrap();
    let out = perplexity(&input, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("3 bad line(s)"), "{err}");
    assert!(
        err.contains("line 2: token id 99999 at prompt position 1 is out of range"),
        "{err}"
    );
    assert!(err.contains("line 3: the line has 1 token(s)"), "{err}");
    assert!(err.contains("line 4: "), "{err}");

    let out = perplexity(&dir.join("missing.jsonl"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read --input"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
