//! The sampling kernel's own code run on the host, without a GPU: `kernels/sampling.cu`
//! compiled by the system C++ compiler against `tests/sampling_emu/sampling_emu.h` (every
//! CUDA thread a host thread; barriers, warp shuffles and shared memory emulated), fed
//! by the real packer ([`super::pack`]) and read back by the real unpacker. Its tokens
//! must equal [`super::reference::sample_fixed`]'s exactly, and the definition's f64
//! tokens wherever the decision is not within rounding of a boundary.
//!
//! Most cases run blocks of 64 threads (2 warps; quick to emulate, and many ids per
//! thread); one test runs the production 1024. Without a C++20 compiler (`$CXX`, else
//! `c++`) the tests print `skipped: …` and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use half::bf16;

use super::pack::{mass_bits, unpack, Plan};
use super::reference;
use crate::sampling::{Penalties, SampleOutput, SamplingRow, NO_FINITE_LOGIT};
use crate::testing::rng::Rng;

/// The emulator binary for blocks of `threads`, built once per test process; `None` (and a
/// printed skip line) without a compiler.
fn emulator(threads: u32) -> Option<PathBuf> {
    static BUILT: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = &BUILT[usize::from(threads == 1024)];
    let built = slot.get_or_init(|| build(threads));
    match built {
        Ok(path) => Some(path.clone()),
        Err(reason) => {
            println!("skipped: {}: {reason}", crate::testing::gpu::current_test());
            None
        }
    }
}

fn build(threads: u32) -> Result<PathBuf, String> {
    crate::cuda::emu_build::build_emulator(
        "sampling_emu",
        &format!("sampling-emu-{threads}"),
        &[format!("-DSAMPLE_THREADS={threads}")],
    )
}

/// Logits as the kernel reads them.
#[derive(Clone)]
enum Logits {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl Logits {
    /// The values the CPU reference sees (bf16 widened exactly).
    fn values(&self) -> Vec<f32> {
        match self {
            Logits::F32(v) => v.clone(),
            Logits::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
    fn bf16(values: &[f32]) -> Self {
        Logits::Bf16(values.iter().map(|&x| bf16::from_f32(x)).collect())
    }
}

/// Runs the emulated kernel on `logits [rows.len(), vocab]`.
fn run(emu: &Path, logits: &Logits, vocab: usize, rows: &[SamplingRow<'_>]) -> SampleOutput {
    crate::sampling::validate_rows("sample", rows.len(), vocab, rows)
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::new("sample", rows, vocab).unwrap_or_else(|e| panic!("{e}"));
    let mut params = vec![0u32; plan.params_words];
    plan.write(rows, &mut params);
    let (dtype, mut bytes) = match logits {
        Logits::F32(v) => (0u32, bytemuck::cast_slice::<f32, u8>(v).to_vec()),
        Logits::Bf16(v) => (1u32, bytemuck::cast_slice::<bf16, u8>(v).to_vec()),
    };
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let head = [
        dtype,
        rows.len() as u32,
        vocab as u32,
        mass_bits(vocab) as u32,
        plan.params_words as u32,
        plan.result_words as u32,
    ];
    let mut input: Vec<u8> = bytemuck::cast_slice(&head).to_vec();
    input.extend_from_slice(&bytes);
    input.extend_from_slice(bytemuck::cast_slice(&params));
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base =
        std::env::temp_dir().join(format!("nanovllm-sampling-emu-{}-{n}", std::process::id()));
    let (inp, outp) = (base.with_extension("in"), base.with_extension("out"));
    std::fs::write(&inp, &input).unwrap_or_else(|e| panic!("{e}"));
    let status = Command::new(emu)
        .arg(&inp)
        .arg(&outp)
        .status()
        .unwrap_or_else(|e| panic!("running the emulator: {e}"));
    assert!(status.success(), "the emulated kernel failed: {status}");
    let out = std::fs::read(&outp).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&inp);
    let _ = std::fs::remove_file(&outp);
    let results: Vec<u32> = out
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(results.len(), plan.result_words);
    unpack(rows, &results)
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Checks the emulated output against the references, row by row: tokens exactly against
/// the fixed-point reference (and the f64 definition where its margin exceeds `1e-9`),
/// logprobs bit for bit.
fn check(logits: &Logits, vocab: usize, rows: &[SamplingRow<'_>], got: &SampleOutput) -> usize {
    let values = logits.values();
    let mut f64_checked = 0;
    for (r, row) in rows.iter().enumerate() {
        let l = reference::processed(&values[r * vocab..(r + 1) * vocab], row);
        let want = reference::sample_fixed(&l, row, mass_bits(vocab));
        assert_eq!(got.tokens[r], want, "row {r} (vocab {vocab}): {row:?}");
        let (want64, margin) = reference::sample_f64(&l, row);
        if margin > 1e-9 {
            assert_eq!(
                got.tokens[r], want64,
                "row {r}, f64 margin {margin:e}: {row:?}"
            );
            f64_checked += 1;
        }
        let want_lp = if want == NO_FINITE_LOGIT {
            None
        } else {
            reference::logprobs(&l, row, want)
        };
        match (&got.logprobs[r], &want_lp) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                // Bit for bit: the same f32 shifts, and log-sum-exps that differ by f64
                // summation order only (≈ 1e-16), which the f32 rounding hides.
                let close = |a: f32, b: f32| a.to_bits() == b.to_bits();
                assert!(close(g.logprob, w.logprob), "row {r}: {g:?} vs {w:?}");
                assert_eq!(g.top.len(), w.top.len(), "row {r}: {g:?} vs {w:?}");
                for (a, b) in g.top.iter().zip(&w.top) {
                    assert!(a.0 == b.0 && close(a.1, b.1), "row {r}: {g:?} vs {w:?}");
                }
            }
            (g, w) => panic!("row {r}: logprobs {g:?}, expected {w:?}"),
        }
    }
    f64_checked
}

/// Random logits: `distinct` levels apart (many exact ties when small), scaled.
fn random_logits(rng: &mut Rng, len: usize, scale: f32, levels: u32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let x = rng.uniform();
            let q = (x * levels as f32).round() / levels as f32;
            q * scale
        })
        .collect()
}

/// The sampled settings every case is run with (each row a different step).
fn settings() -> Vec<SamplingRow<'static>> {
    let base = SamplingRow {
        temperature: 1.0,
        ..SamplingRow::default()
    };
    vec![
        base,
        SamplingRow {
            temperature: 0.7,
            top_k: 5,
            ..base
        },
        SamplingRow {
            temperature: 1.3,
            top_p: 0.9,
            ..base
        },
        SamplingRow {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.8,
            min_p: 0.05,
            ..base
        },
        SamplingRow {
            temperature: 2.0,
            min_p: 0.2,
            ..base
        },
        SamplingRow {
            temperature: 0.7,
            top_p: 0.3,
            num_logprobs: Some(5),
            ..base
        },
        SamplingRow {
            temperature: 5.0,
            top_k: 3000,
            top_p: 0.95,
            ..base
        },
        SamplingRow {
            temperature: 1e-3,
            top_p: 0.99,
            ..base
        },
        SamplingRow {
            top_k: 1,
            num_logprobs: Some(0),
            ..base
        },
        SamplingRow {
            num_logprobs: Some(20),
            ..SamplingRow::default()
        },
    ]
}

/// `rows_per` rows per setting, with shared random logits per row and steps 0, 1, ….
fn sampled_batch(
    rng: &mut Rng,
    vocab: usize,
    rows_per: usize,
    levels: u32,
) -> (Vec<f32>, Vec<SamplingRow<'static>>) {
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for (s, setting) in settings().into_iter().enumerate() {
        for step in 0..rows_per {
            rows.push(SamplingRow {
                seed: 1000 + s as u64,
                step: step as u64,
                ..setting
            });
            values.extend(random_logits(rng, vocab, 6.0, levels));
        }
    }
    (values, rows)
}

#[test]
fn sampled_rows_match_the_references() {
    let Some(emu) = emulator(64) else { return };
    let mut rng = Rng::new(71);
    let mut f64_checked = 0;
    let mut total = 0;
    // Vocabularies below, at and above one id per thread, unaligned and aligned rows,
    // above LIST_CAP (top-k 3000 stays in the row domain), coarse logits (many ties).
    for (vocab, levels, rows_per) in [
        (1usize, 8u32, 2usize),
        (7, 4, 3),
        (100, 1 << 20, 4),
        (1000, 16, 4),
        (4099, 64, 3),
        (5000, 1 << 20, 3),
        // Four distinct logits: thousands of ids tied at every threshold.
        (5000, 4, 3),
    ] {
        let (values, rows) = sampled_batch(&mut rng, vocab, rows_per, levels);
        for logits in [Logits::F32(values.clone()), Logits::bf16(&values)] {
            let got = run(&emu, &logits, vocab, &rows);
            f64_checked += check(&logits, vocab, &rows, &got);
            total += rows.len();
        }
    }
    // Nearly every decision is far from its boundary.
    assert!(f64_checked * 10 >= total * 9, "{f64_checked} of {total}");
}

#[test]
fn many_draws_of_one_row_match_the_references() {
    let Some(emu) = emulator(64) else { return };
    let mut rng = Rng::new(72);
    let vocab = 300;
    let values = random_logits(&mut rng, vocab, 3.0, 32);
    for setting in [
        SamplingRow {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.7,
            ..SamplingRow::default()
        },
        SamplingRow {
            temperature: 1.5,
            min_p: 0.1,
            ..SamplingRow::default()
        },
    ] {
        let rows: Vec<SamplingRow<'_>> = (0..200)
            .map(|step| SamplingRow {
                seed: 5,
                step,
                ..setting
            })
            .collect();
        let all: Vec<f32> = (0..rows.len()).flat_map(|_| values.clone()).collect();
        let logits = Logits::bf16(&all);
        let got = run(&emu, &logits, vocab, &rows);
        check(&logits, vocab, &rows, &got);
        let distinct: std::collections::HashSet<u32> = got.tokens.iter().copied().collect();
        assert!(distinct.len() > 3, "{distinct:?}");
    }
}

#[test]
fn processing_and_special_values_match_the_reference() {
    let Some(emu) = emulator(64) else { return };
    let vocab = 200;
    let mut rng = Rng::new(73);
    let mut base = random_logits(&mut rng, vocab, 4.0, 1 << 16);
    // The biased and penalised ids lead (positive and negative logits), so their exact
    // processed values show in the top logprobs, compared bit for bit.
    for (k, id) in [1usize, 2, 3, 5, 7, 9, 150, 199].into_iter().enumerate() {
        base[id] = if k % 2 == 0 {
            9.0 + 0.37 * k as f32
        } else {
            -0.1 - 0.013 * k as f32
        };
    }
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for i in (0..vocab).filter(|i| i % 3 == 0) {
        mask[i / 32] |= 1 << (i % 32);
    }
    let nothing = vec![0u32; vocab.div_ceil(32)];
    let bias: &[(u32, f32)] = &[(5, 3.0), (7, -2.0), (5, 0.25), (199, 9.0)];
    let penalties = Penalties {
        repetition: 1.7,
        frequency: 0.4,
        presence: 0.3,
        prompt_tokens: &[1, 2, 3, 5, 150],
        output_counts: &[(2, 4), (9, 1), (150, 2), (9, 2)],
    };
    let mut values = Vec::new();
    let mut rows = Vec::new();
    fn push<'a>(
        values: &mut Vec<f32>,
        rows: &mut Vec<SamplingRow<'a>>,
        l: &[f32],
        row: SamplingRow<'a>,
    ) {
        values.extend_from_slice(l);
        rows.push(row);
    }
    let greedy = SamplingRow {
        num_logprobs: Some(20),
        ..SamplingRow::default()
    };
    let sampled = SamplingRow {
        temperature: 0.9,
        top_k: 10,
        num_logprobs: Some(20),
        step: 3,
        ..SamplingRow::default()
    };
    let mut special = vec![f32::NAN; vocab];
    special[17] = -1.0;
    special[40] = f32::NEG_INFINITY;
    special[41] = 2.0;
    let mut inf = base.clone();
    inf[60] = f32::INFINITY;
    inf[90] = f32::INFINITY;
    // Exact ties everywhere (±0 alternating).
    let ties: Vec<f32> = (0..vocab)
        .map(|i| if i % 2 == 1 { -0.0 } else { 0.0 })
        .collect();
    let all_nan = vec![f32::NAN; vocab];
    for row in [greedy, sampled] {
        let v = &mut values;
        let r = &mut rows;
        push(v, r, &base, row);
        push(
            v,
            r,
            &base,
            SamplingRow {
                allowed_tokens: Some(&mask),
                ..row
            },
        );
        push(
            v,
            r,
            &base,
            SamplingRow {
                logit_bias: bias,
                penalties: Some(penalties),
                ..row
            },
        );
        push(
            v,
            r,
            &base,
            SamplingRow {
                allowed_tokens: Some(&mask),
                logit_bias: bias,
                penalties: Some(penalties),
                ..row
            },
        );
        // The mask allows nothing: no finite logit.
        push(
            v,
            r,
            &base,
            SamplingRow {
                allowed_tokens: Some(&nothing),
                ..row
            },
        );
        // NaN everywhere but two ids, one of them −∞.
        push(v, r, &special, row);
        push(v, r, &all_nan, row);
        // +∞ among finite values: no finite maximum.
        push(v, r, &inf, row);
        // All equal: the lowest ids win.
        push(v, r, &ties, row);
    }
    for logits in [Logits::F32(values.clone()), Logits::bf16(&values)] {
        let got = run(&emu, &logits, vocab, &rows);
        check(&logits, vocab, &rows, &got);
        // Spot checks that do not rely on the reference.
        assert_eq!(got.tokens[4], NO_FINITE_LOGIT);
        assert_eq!(got.logprobs[4], None);
        assert_eq!(got.tokens[5], 41);
        assert_eq!(got.tokens[6], NO_FINITE_LOGIT);
        assert_eq!(got.tokens[7], NO_FINITE_LOGIT);
        assert_eq!(got.tokens[8], 0);
        assert_eq!(got.tokens[9 + 7], NO_FINITE_LOGIT, "{:?}", got.tokens);
    }
}

#[test]
fn a_logprob_token_is_scored_instead_of_the_chosen_one() {
    let Some(emu) = emulator(64) else { return };
    let vocab = 150;
    let mut rng = Rng::new(91);
    let base = random_logits(&mut rng, vocab, 6.0, 1 << 16);
    let penalties = Penalties {
        repetition: 1.3,
        frequency: 0.2,
        presence: 0.1,
        prompt_tokens: &[4, 8],
        output_counts: &[(8, 2)],
    };
    let mut values = Vec::new();
    let mut rows = Vec::new();
    for (k, target) in [0u32, 8, 77, 149].into_iter().enumerate() {
        let row = SamplingRow {
            temperature: if k % 2 == 0 { 0.0 } else { 0.8 },
            num_logprobs: Some(k * 3),
            logprob_token: Some(target),
            step: k as u64,
            penalties: (k == 1).then_some(penalties),
            ..SamplingRow::default()
        };
        values.extend_from_slice(&base);
        rows.push(row);
    }
    for logits in [Logits::F32(values.clone()), Logits::bf16(&values)] {
        let got = run(&emu, &logits, vocab, &rows);
        check(&logits, vocab, &rows, &got);
        // The scored token's logprob, not the chosen one's (they differ: the targets are
        // not the argmax of these logits).
        for (r, row) in rows.iter().enumerate() {
            let l = reference::processed(&logits.values()[r * vocab..(r + 1) * vocab], row);
            let want = reference::logprobs(&l, row, got.tokens[r]).unwrap();
            assert_eq!(got.logprobs[r].as_ref().unwrap().logprob, want.logprob);
        }
    }
}

#[test]
fn a_seeded_row_gives_the_same_token_alone_and_in_any_batch() {
    let Some(emu) = emulator(64) else { return };
    let vocab = 1000;
    let mut rng = Rng::new(74);
    let (values, rows) = sampled_batch(&mut rng, vocab, 2, 1 << 12);
    let logits = Logits::bf16(&values);
    let batch = run(&emu, &logits, vocab, &rows);
    let all = logits.values();
    for r in [0, 3, 7, rows.len() - 1] {
        let alone = run(
            &emu,
            &Logits::bf16(&all[r * vocab..(r + 1) * vocab]),
            vocab,
            &rows[r..r + 1],
        );
        assert_eq!(alone.tokens[0], batch.tokens[r], "row {r}");
        assert_eq!(alone.logprobs[0], batch.logprobs[r], "row {r}");
    }
    // And the same again (the emulated threads are scheduled differently every run).
    assert_eq!(run(&emu, &logits, vocab, &rows), batch);
}

#[test]
fn production_block_size_matches_the_references() {
    let Some(emu) = emulator(1024) else { return };
    let mut rng = Rng::new(75);
    for (vocab, levels) in [(1000usize, 1u32 << 20), (20_011, 64)] {
        let (values, rows) = sampled_batch(&mut rng, vocab, 1, levels);
        let logits = Logits::bf16(&values);
        let got = run(&emu, &logits, vocab, &rows);
        check(&logits, vocab, &rows, &got);
    }
}

#[test]
fn top_k_ties_admit_the_lowest_ids_in_both_kernel_paths() {
    let Some(emu) = emulator(64) else { return };
    let vocab = 3000;
    // Every third id at 1.0, the rest at 0.0: top-k cuts through 2000 tied zeros.
    let values: Vec<f32> = (0..vocab)
        .map(|i| if i % 3 == 0 { 1.0 } else { 0.0 })
        .collect();
    // ≤ LIST_CAP (gathered into shared memory) and > LIST_CAP (filtered in place); the
    // last admitted zero is followed by a zero (k odd) or by a one (k even).
    for top_k in [1499usize, 1500, 2499, 2500] {
        let rows: Vec<SamplingRow<'_>> = (0..16)
            .map(|step| SamplingRow {
                temperature: 1.0,
                top_k,
                top_p: if step % 2 == 0 { 1.0 } else { 0.9 },
                seed: 9,
                step,
                ..SamplingRow::default()
            })
            .collect();
        let all: Vec<f32> = (0..rows.len()).flat_map(|_| values.clone()).collect();
        let logits = Logits::bf16(&all);
        let got = run(&emu, &logits, vocab, &rows);
        check(&logits, vocab, &rows, &got);
        // The survivors: the 1000 ones, then the lowest zeros up to k.
        let zeros_kept = top_k - 1000;
        let last_zero = (0..vocab).filter(|i| i % 3 != 0).nth(zeros_kept - 1);
        for &t in &got.tokens {
            let t = t as usize;
            assert!(
                t % 3 == 0 || Some(t) <= last_zero,
                "top_k {top_k}: token {t}"
            );
        }
    }
}

#[test]
fn min_p_keeps_weights_equal_to_it() {
    let Some(emu) = emulator(64) else { return };
    let vocab = 50;
    // Four tied maxima have weight exactly 1: min_p = 1 keeps exactly them.
    let values: Vec<f32> = (0..vocab)
        .map(|i| {
            if [3, 11, 12, 40].contains(&i) {
                2.0
            } else {
                -1.0
            }
        })
        .collect();
    let rows: Vec<SamplingRow<'_>> = (0..40)
        .map(|step| SamplingRow {
            temperature: 1.0,
            min_p: 1.0,
            seed: 2,
            step,
            ..SamplingRow::default()
        })
        .collect();
    let all: Vec<f32> = (0..rows.len()).flat_map(|_| values.clone()).collect();
    let logits = Logits::F32(all);
    let got = run(&emu, &logits, vocab, &rows);
    check(&logits, vocab, &rows, &got);
    let seen: std::collections::BTreeSet<u32> = got.tokens.iter().copied().collect();
    assert_eq!(seen, [3, 11, 12, 40].into_iter().collect());
}

#[test]
fn histogram_bins_sum_exactly_across_32_bit_carries() {
    for threads in [64, 1024] {
        let Some(emu) = emulator(threads) else { return };
        let output = Command::new(&emu)
            .arg("--hist-selftest")
            .output()
            .unwrap_or_else(|e| panic!("running the emulator: {e}"));
        assert!(
            output.status.success(),
            "{threads} threads: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
