//! The host half of `kernels/sampling.cu`'s interface: how the rows' parameters are packed
//! into one u32 buffer, how big the result buffer is, how results are read back, and the
//! kernel's launch shape and fixed-point scale. Pure host code, tested without a GPU.
//!
//! Params (u32 words): `R` row headers of [`ROW_WORDS`] (`H_*` below), then, row after row,
//! its token mask (`ceil(V / 32)` words), its edit entries ([`EDIT_WORDS`] each, sorted by
//! id, one per distinct token the logit bias or the penalties touch) and their values
//! (bias f32 bits in list order, output counts in list order). Offsets stored in the
//! buffer are absolute word indices.
//!
//! Results (u32 words): `R` tokens, then [`LOGPROB_WORDS`] per row that asks for logprobs,
//! in row order: the chosen token's logprob (f32 bits; the logprob of the row's
//! `logprob_token` when set, whose id the header carries in `H_LOGPROB_TOKEN`), the count `n`, then `n` pairs
//! (id, logprob bits), most likely first.

use crate::error::{KernelError, Result};
use crate::sampling::{RowLogprobs, SampleOutput, SamplingRow, MAX_NUM_LOGPROBS};

/// Threads per block (one block per row): `SAMPLE_THREADS` in sampling.cu.
pub(crate) const THREADS: u32 = 1024;

pub(crate) const ROW_WORDS: usize = 20;
const H_FLAGS: usize = 0;
const H_TEMPERATURE: usize = 1;
const H_TOP_K: usize = 2;
const H_TOP_P: usize = 3;
const H_MIN_P: usize = 4;
const H_SEED_LO: usize = 5;
const H_SEED_HI: usize = 6;
const H_STEP_LO: usize = 7;
const H_STEP_HI: usize = 8;
const H_NUM_LOGPROBS: usize = 9;
const H_LOGPROB_SLOT: usize = 10;
const H_MASK: usize = 11;
const H_EDITS: usize = 12;
const H_NUM_EDITS: usize = 13;
const H_REPETITION: usize = 14;
const H_FREQUENCY: usize = 15;
const H_PRESENCE: usize = 16;
const H_LOGPROB_TOKEN: usize = 17;

const FLAG_GREEDY: u32 = 1;
const FLAG_MASK: u32 = 2;
const FLAG_LOGPROBS: u32 = 4;
const FLAG_LOGPROB_TOKEN: u32 = 8;

/// Words of one edit entry: id, first bias word, bias count, first output-count word,
/// output entries, in-prompt flag.
pub(crate) const EDIT_WORDS: usize = 6;

/// Result words of a row that asks for logprobs.
pub(crate) const LOGPROB_WORDS: usize = 2 + 2 * MAX_NUM_LOGPROBS;

/// Fraction bits `F` of the kernel's fixed-point masses `round(w · 2^F)` for weights
/// `w ∈ [0, 1]`: `63 − ceil(log2 V)`, the most for which a sum of `V` masses fits a u64
/// (`V · 2^F ≤ 2^63`).
pub(crate) fn mass_bits(vocab: usize) -> i32 {
    let ceil_log2 = if vocab <= 1 {
        0
    } else {
        usize::BITS - (vocab - 1).leading_zeros()
    };
    63 - ceil_log2 as i32
}

/// One distinct token that the bias or the penalties touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Edit {
    id: u32,
    /// First bias value, relative to the row's values.
    bias: u32,
    num_bias: u32,
    /// First output count, relative to the row's values.
    out: u32,
    num_out: u32,
    in_prompt: bool,
}

/// Where one row's variable-size parts go (absolute word offsets).
#[derive(Clone, Copy, Debug, Default)]
struct RowPlan {
    mask_at: u32,
    edits_at: u32,
    num_edits: u32,
    /// First edit in `Plan::edits`, first value in `Plan::values`.
    first_edit: usize,
    first_value: usize,
    values_at: u32,
    logprob_slot: u32,
}

/// Everything needed to write the params buffer, and its sizes. Built from the rows once
/// (sorting each row's touched ids); then [`Plan::write`] fills a buffer of
/// [`Plan::params_words`] words.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    rows: Vec<RowPlan>,
    edits: Vec<Edit>,
    values: Vec<u32>,
    vocab: usize,
    pub(crate) params_words: usize,
    pub(crate) result_words: usize,
}

impl Plan {
    /// Plans the buffers for `rows` (already checked by `sampling::validate_rows`) over a
    /// vocabulary of `vocab` tokens.
    pub(crate) fn new(op: &'static str, rows: &[SamplingRow<'_>], vocab: usize) -> Result<Self> {
        let mask_words = vocab.div_ceil(32);
        let mut plan = Plan {
            vocab,
            ..Plan::default()
        };
        let mut cursor = rows.len() * ROW_WORDS;
        let mut logprob_rows = 0usize;
        let mut scratch = Scratch::default();
        for row in rows {
            let mut rp = RowPlan::default();
            if row.allowed_tokens.is_some() {
                rp.mask_at = offset(op, cursor)?;
                cursor += mask_words;
            }
            rp.first_edit = plan.edits.len();
            rp.first_value = plan.values.len();
            scratch.plan_edits(row, &mut plan.edits, &mut plan.values);
            let num_edits = plan.edits.len() - rp.first_edit;
            rp.edits_at = offset(op, cursor)?;
            rp.num_edits = offset(op, num_edits)?;
            cursor += num_edits * EDIT_WORDS;
            rp.values_at = offset(op, cursor)?;
            cursor += plan.values.len() - rp.first_value;
            if row.num_logprobs.is_some() {
                rp.logprob_slot = offset(op, logprob_rows)?;
                logprob_rows += 1;
            }
            plan.rows.push(rp);
        }
        // Every stored offset is a u32, the last one included.
        offset(op, cursor)?;
        plan.params_words = cursor;
        plan.result_words = rows.len() + logprob_rows * LOGPROB_WORDS;
        Ok(plan)
    }

    /// Writes the params of `rows` (the rows this plan was made for) into `out`, which has
    /// at least [`Plan::params_words`] words.
    pub(crate) fn write(&self, rows: &[SamplingRow<'_>], out: &mut [u32]) {
        let vocab = self.vocab;
        for (r, (row, rp)) in rows.iter().zip(&self.rows).enumerate() {
            let h = &mut out[r * ROW_WORDS..(r + 1) * ROW_WORDS];
            h.fill(0);
            let mut flags = 0;
            if row.is_greedy() {
                flags |= FLAG_GREEDY;
            }
            if row.allowed_tokens.is_some() {
                flags |= FLAG_MASK;
            }
            if row.num_logprobs.is_some() {
                flags |= FLAG_LOGPROBS;
            }
            if let Some(id) = row.logprob_token {
                flags |= FLAG_LOGPROB_TOKEN;
                h[H_LOGPROB_TOKEN] = id;
            }
            h[H_FLAGS] = flags;
            h[H_TEMPERATURE] = row.temperature.to_bits();
            // 0 turns top-k off: asked for, or keeping every token anyway.
            h[H_TOP_K] = if row.top_k < vocab {
                row.top_k as u32
            } else {
                0
            };
            h[H_TOP_P] = row.top_p.to_bits();
            h[H_MIN_P] = row.min_p.to_bits();
            h[H_SEED_LO] = row.seed as u32;
            h[H_SEED_HI] = (row.seed >> 32) as u32;
            h[H_STEP_LO] = row.step as u32;
            h[H_STEP_HI] = (row.step >> 32) as u32;
            h[H_NUM_LOGPROBS] = row.num_logprobs.unwrap_or(0) as u32;
            h[H_LOGPROB_SLOT] = rp.logprob_slot;
            h[H_MASK] = rp.mask_at;
            h[H_EDITS] = rp.edits_at;
            h[H_NUM_EDITS] = rp.num_edits;
            let (repetition, frequency, presence) =
                row.penalties.map_or((1.0f32, 0.0f32, 0.0f32), |p| {
                    (p.repetition, p.frequency, p.presence)
                });
            h[H_REPETITION] = repetition.to_bits();
            h[H_FREQUENCY] = frequency.to_bits();
            h[H_PRESENCE] = presence.to_bits();

            if let Some(mask) = row.allowed_tokens {
                let at = rp.mask_at as usize;
                out[at..at + mask.len()].copy_from_slice(mask);
            }
            let edits = &self.edits[rp.first_edit..rp.first_edit + rp.num_edits as usize];
            for (e, edit) in edits.iter().enumerate() {
                let at = rp.edits_at as usize + e * EDIT_WORDS;
                out[at..at + EDIT_WORDS].copy_from_slice(&[
                    edit.id,
                    rp.values_at + edit.bias,
                    edit.num_bias,
                    rp.values_at + edit.out,
                    edit.num_out,
                    edit.in_prompt as u32,
                ]);
            }
            let next_first_value = self
                .rows
                .get(r + 1)
                .map_or(self.values.len(), |next| next.first_value);
            let values = &self.values[rp.first_value..next_first_value];
            let at = rp.values_at as usize;
            out[at..at + values.len()].copy_from_slice(values);
        }
    }
}

fn offset(op: &'static str, words: usize) -> Result<u32> {
    u32::try_from(words).map_err(|_| KernelError::Invalid {
        op,
        msg: format!("the sampling parameters need {words} words, more than u32 offsets reach"),
    })
}

/// Reused sort buffers for one row's touched ids.
#[derive(Default)]
struct Scratch {
    bias: Vec<(u32, usize)>,
    prompt: Vec<u32>,
    out: Vec<(u32, usize)>,
}

impl Scratch {
    /// Appends `row`'s edits (sorted by id, one per distinct id) to `edits` and their
    /// values to `values` (offsets relative to the row's first value).
    fn plan_edits(&mut self, row: &SamplingRow<'_>, edits: &mut Vec<Edit>, values: &mut Vec<u32>) {
        let first_value = values.len();
        // (id, position in the list), sorted by id then position: each id's entries keep
        // their list order.
        self.bias.clear();
        self.bias.extend(
            row.logit_bias
                .iter()
                .enumerate()
                .map(|(i, &(id, _))| (id, i)),
        );
        self.bias.sort_unstable();
        self.prompt.clear();
        self.out.clear();
        if let Some(p) = &row.penalties {
            self.prompt.extend_from_slice(p.prompt_tokens);
            self.prompt.sort_unstable();
            self.prompt.dedup();
            self.out.extend(
                p.output_counts
                    .iter()
                    .enumerate()
                    .map(|(i, &(id, _))| (id, i)),
            );
            self.out.sort_unstable();
        }
        let (mut b, mut p, mut o) = (0, 0, 0);
        loop {
            let id = [
                self.bias.get(b).map(|e| e.0),
                self.prompt.get(p).copied(),
                self.out.get(o).map(|e| e.0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(id) = id else { break };
            let bias = (values.len() - first_value) as u32;
            while let Some(&(_, i)) = self.bias.get(b).filter(|e| e.0 == id) {
                values.push(row.logit_bias[i].1.to_bits());
                b += 1;
            }
            let num_bias = (values.len() - first_value) as u32 - bias;
            let in_prompt = self.prompt.get(p) == Some(&id);
            if in_prompt {
                p += 1;
            }
            let out = (values.len() - first_value) as u32;
            if let Some(pen) = &row.penalties {
                while let Some(&(_, i)) = self.out.get(o).filter(|e| e.0 == id) {
                    values.push(pen.output_counts[i].1);
                    o += 1;
                }
            }
            let num_out = (values.len() - first_value) as u32 - out;
            edits.push(Edit {
                id,
                bias,
                num_bias,
                out,
                num_out,
                in_prompt,
            });
        }
    }
}

/// The output of `rows` from the kernel's result words (see the module docs).
pub(crate) fn unpack(rows: &[SamplingRow<'_>], results: &[u32]) -> SampleOutput {
    let tokens = results[..rows.len()].to_vec();
    let mut slot = 0;
    let logprobs = rows
        .iter()
        .zip(&tokens)
        .map(|(row, &token)| {
            row.num_logprobs?;
            let at = rows.len() + slot * LOGPROB_WORDS;
            slot += 1;
            if token == crate::sampling::NO_FINITE_LOGIT {
                return None;
            }
            let words = &results[at..at + LOGPROB_WORDS];
            let count = (words[1] as usize).min(MAX_NUM_LOGPROBS);
            Some(RowLogprobs {
                logprob: f32::from_bits(words[0]),
                top: (0..count)
                    .map(|j| (words[2 + 2 * j], f32::from_bits(words[3 + 2 * j])))
                    .collect(),
            })
        })
        .collect();
    SampleOutput { tokens, logprobs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Penalties;

    #[test]
    fn mass_bits_keep_every_sum_of_v_masses_in_a_u64() {
        assert_eq!(mass_bits(1), 63);
        assert_eq!(mass_bits(2), 62);
        assert_eq!(mass_bits(3), 61);
        assert_eq!(mass_bits(151_936), 45);
        assert_eq!(mass_bits(1 << 18), 45);
        assert_eq!(mass_bits((1 << 18) + 1), 44);
        assert_eq!(mass_bits(u32::MAX as usize - 1), 31);
        for v in [1usize, 2, 3, 7, 8, 9, 1000, 151_936, 262_144, 1 << 31] {
            // V masses of at most 2^F each.
            let f = mass_bits(v);
            assert!((v as u128) << f <= 1u128 << 63, "V {v}, F {f}");
            assert!(
                (v as u128) << (f + 1) > 1u128 << 63,
                "F {f} is not the largest"
            );
        }
    }

    fn plan_and_write(rows: &[SamplingRow<'_>], vocab: usize) -> (Plan, Vec<u32>) {
        let plan = Plan::new("sample", rows, vocab).unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0xdead_beef; plan.params_words];
        plan.write(rows, &mut out);
        (plan, out)
    }

    #[test]
    fn headers_carry_every_parameter() {
        let rows = [
            SamplingRow::default(),
            SamplingRow {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.05,
                seed: 0x1234_5678_9abc_def0,
                step: (7u64 << 32) | 3,
                num_logprobs: Some(5),
                ..SamplingRow::default()
            },
            // top_k ≥ V is off.
            SamplingRow {
                temperature: 1.0,
                top_k: 100,
                num_logprobs: Some(0),
                ..SamplingRow::default()
            },
        ];
        let (plan, out) = plan_and_write(&rows, 100);
        assert_eq!(plan.params_words, 3 * ROW_WORDS);
        assert_eq!(plan.result_words, 3 + 2 * LOGPROB_WORDS);
        let h0 = &out[..ROW_WORDS];
        assert_eq!(h0[H_FLAGS], FLAG_GREEDY);
        assert_eq!(h0[H_TOP_P], 1.0f32.to_bits());
        assert_eq!(h0[H_NUM_EDITS], 0);
        assert_eq!(h0[H_REPETITION], 1.0f32.to_bits());
        let h1 = &out[ROW_WORDS..2 * ROW_WORDS];
        assert_eq!(h1[H_FLAGS], FLAG_LOGPROBS);
        assert_eq!(f32::from_bits(h1[H_TEMPERATURE]), 0.7);
        assert_eq!(h1[H_TOP_K], 40);
        assert_eq!(f32::from_bits(h1[H_TOP_P]), 0.9);
        assert_eq!(f32::from_bits(h1[H_MIN_P]), 0.05);
        assert_eq!((h1[H_SEED_LO], h1[H_SEED_HI]), (0x9abc_def0, 0x1234_5678));
        assert_eq!((h1[H_STEP_LO], h1[H_STEP_HI]), (3, 7));
        assert_eq!((h1[H_NUM_LOGPROBS], h1[H_LOGPROB_SLOT]), (5, 0));
        let h2 = &out[2 * ROW_WORDS..3 * ROW_WORDS];
        assert_eq!(h2[H_TOP_K], 0);
        assert_eq!(h2[H_FLAGS], FLAG_LOGPROBS);
        assert_eq!((h2[H_NUM_LOGPROBS], h2[H_LOGPROB_SLOT]), (0, 1));
        // Every header word is written (no garbage left in padding).
        assert!(out.iter().all(|&w| w != 0xdead_beef));
    }

    /// The edit entries of row `r`, with their biases and output counts resolved.
    fn edits_of(out: &[u32], r: usize) -> Vec<(u32, Vec<f32>, Vec<u32>, bool)> {
        let h = &out[r * ROW_WORDS..(r + 1) * ROW_WORDS];
        (0..h[H_NUM_EDITS] as usize)
            .map(|e| {
                let at = h[H_EDITS] as usize + e * EDIT_WORDS;
                let w = &out[at..at + EDIT_WORDS];
                let bias = (0..w[2] as usize)
                    .map(|j| f32::from_bits(out[w[1] as usize + j]))
                    .collect();
                let counts = (0..w[4] as usize).map(|j| out[w[3] as usize + j]).collect();
                (w[0], bias, counts, w[5] != 0)
            })
            .collect()
    }

    #[test]
    fn edits_are_sorted_distinct_ids_with_their_lists_in_order() {
        let mask = [0b1011u32, 0, 0, 0];
        let rows = [
            SamplingRow {
                temperature: 1.0,
                allowed_tokens: Some(&mask),
                // Id 9 twice: both biases, in list order.
                logit_bias: &[(9, 2.0), (3, -1.0), (9, 0.5)],
                penalties: Some(Penalties {
                    repetition: 1.3,
                    frequency: 0.2,
                    presence: 0.1,
                    // 5 in the prompt and the output; 3 twice in the prompt.
                    prompt_tokens: &[5, 3, 3, 100],
                    output_counts: &[(7, 2), (5, 1)],
                }),
                ..SamplingRow::default()
            },
            SamplingRow {
                logit_bias: &[(0, 1.0)],
                ..SamplingRow::default()
            },
        ];
        let (plan, out) = plan_and_write(&rows, 101);
        let h = &out[..ROW_WORDS];
        assert_eq!(h[H_FLAGS], FLAG_MASK);
        assert_eq!(&out[h[H_MASK] as usize..h[H_MASK] as usize + 4], &mask);
        assert_eq!(f32::from_bits(h[H_REPETITION]), 1.3);
        assert_eq!(f32::from_bits(h[H_FREQUENCY]), 0.2);
        assert_eq!(f32::from_bits(h[H_PRESENCE]), 0.1);
        assert_eq!(
            edits_of(&out, 0),
            vec![
                (3, vec![-1.0], vec![], true),
                (5, vec![], vec![1], true),
                (7, vec![], vec![2], false),
                (9, vec![2.0, 0.5], vec![], false),
                (100, vec![], vec![], true),
            ]
        );
        assert_eq!(edits_of(&out, 1), vec![(0, vec![1.0], vec![], false)]);
        // Mask (4) + 5 edits + 5 values, then 1 edit + 1 value.
        assert_eq!(plan.params_words, 2 * ROW_WORDS + 4 + 5 * 6 + 5 + 6 + 1);
        assert_eq!(plan.result_words, 2);
    }

    #[test]
    fn duplicate_output_entries_are_each_kept_in_list_order() {
        let rows = [SamplingRow {
            penalties: Some(Penalties {
                repetition: 1.0,
                frequency: 1.0,
                presence: 0.0,
                prompt_tokens: &[],
                output_counts: &[(4, 3), (2, 1), (4, 5)],
            }),
            ..SamplingRow::default()
        }];
        let (_, out) = plan_and_write(&rows, 10);
        assert_eq!(
            edits_of(&out, 0),
            vec![(2, vec![], vec![1], false), (4, vec![], vec![3, 5], false)]
        );
    }

    #[test]
    fn unpack_reads_tokens_and_the_rows_logprobs() {
        let rows = [
            SamplingRow {
                num_logprobs: Some(2),
                ..SamplingRow::default()
            },
            SamplingRow::default(),
            SamplingRow {
                num_logprobs: Some(1),
                ..SamplingRow::default()
            },
        ];
        let mut results = vec![0u32; 3 + 2 * LOGPROB_WORDS];
        results[..3].copy_from_slice(&[4, 9, crate::sampling::NO_FINITE_LOGIT]);
        let lp = &mut results[3..3 + LOGPROB_WORDS];
        lp[0] = (-0.5f32).to_bits();
        lp[1] = 2;
        lp[2..6].copy_from_slice(&[4, (-0.5f32).to_bits(), 1, (-1.5f32).to_bits()]);
        let out = unpack(&rows, &results);
        assert_eq!(out.tokens, vec![4, 9, crate::sampling::NO_FINITE_LOGIT]);
        assert_eq!(
            out.logprobs,
            vec![
                Some(RowLogprobs {
                    logprob: -0.5,
                    top: vec![(4, -0.5), (1, -1.5)]
                }),
                None,
                None,
            ]
        );
    }
}
