//! [`Tracked`]: what the engine thread keeps for one sequence in flight, and
//! the [`SeqEvent`]s it sends back to the HTTP handler that owns it.
//!
//! A sequence that asked for prompt logprobs first gets one `PromptLogprobs`
//! event. Every generated token yields exactly one `Token` event (its text may be
//! empty: a partial UTF-8 character); then exactly one `Finished` event
//! carries the remaining text and the reason. The text of a token that ended
//! the sequence as an end-of-sequence or stop token id is never shown (as vLLM
//! does). Stop strings are not looked for here but in the request's own task
//! (`generation`), so that they cost the engine thread nothing.
//!
//! However a sequence ends, [`Tracked::retire`] counts it in the metrics and logs one info
//! line for it (id, prompt and completion tokens, time, finish reason).

use std::time::{Duration, Instant};

use nanovllm_core::{
    FinishReason, IncrementalDetokenizer, RequestId, RequestOutput, TokenLogprobs, Tokenizer,
};
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::{FinishLabel, Metrics};

/// How a sequence ended, as the API reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// An end-of-sequence token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// Cancelled by the server (shutdown).
    Abort,
    /// The engine failed on it.
    Error(String),
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_openai_str(&self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort | Finish::Error(_) => "abort",
        }
    }

    pub fn label(&self) -> FinishLabel {
        match self {
            Finish::Stop => FinishLabel::Stop,
            Finish::Length => FinishLabel::Length,
            Finish::Abort => FinishLabel::Abort,
            Finish::Error(_) => FinishLabel::Error,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SeqEvent {
    /// The prompt's logprobs (`SamplingParams::prompt_logprobs`), before any `Token`.
    PromptLogprobs(Vec<Option<TokenLogprobs>>),
    Token {
        /// New text to show (possibly empty).
        text: String,
        token_id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        /// Text held back until the end (possibly empty).
        text: String,
        finish: Finish,
    },
}

/// An event for choice `choice` of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceEvent {
    pub choice: usize,
    pub event: SeqEvent,
}

/// One sequence in flight.
#[derive(Debug)]
pub struct Tracked {
    choice: usize,
    events: UnboundedSender<ChoiceEvent>,
    detokenizer: IncrementalDetokenizer,
    arrival: Instant,
    last_token_at: Option<Instant>,
    prompt_len: usize,
    num_generated: usize,
    /// The request's `stop_token_ids` (see [`ends_by_token`]).
    stop_token_ids: Vec<u32>,
}

/// What became of a sequence after a token.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterToken {
    Continue,
    /// It ended here (a detokenizer failure): its `Finished` is sent and the
    /// engine must abort it.
    Ended(FinishLabel),
    /// Its handler is gone: the engine must abort it.
    Orphaned,
}

impl Tracked {
    pub fn new(
        choice: usize,
        events: UnboundedSender<ChoiceEvent>,
        prompt_ids: &[u32],
        stop_token_ids: Vec<u32>,
    ) -> Self {
        Self {
            stop_token_ids,
            choice,
            events,
            detokenizer: IncrementalDetokenizer::new(prompt_ids),
            arrival: Instant::now(),
            last_token_at: None,
            prompt_len: prompt_ids.len(),
            num_generated: 0,
        }
    }

    /// Handles one generated token. `ends_by_token` says the sequence finished
    /// on this very token as an end-of-sequence or stop token id.
    pub fn on_token(
        &mut self,
        tokenizer: &Tokenizer,
        token_id: u32,
        logprobs: Option<TokenLogprobs>,
        ends_by_token: bool,
        metrics: &Metrics,
    ) -> AfterToken {
        let now = Instant::now();
        match self.last_token_at {
            None => metrics.observe_ttft(now - self.arrival),
            Some(prev) => metrics.observe_tpot(now - prev),
        }
        self.last_token_at = Some(now);
        self.num_generated += 1;
        let piece = if ends_by_token {
            String::new()
        } else {
            match self.detokenizer.push(tokenizer, token_id) {
                Ok(piece) => piece,
                Err(e) => {
                    self.finish(String::new(), Finish::Error(e.to_string()));
                    return AfterToken::Ended(FinishLabel::Error);
                }
            }
        };
        let sent = self.send(SeqEvent::Token {
            text: piece,
            token_id,
            logprobs,
        });
        if sent {
            AfterToken::Continue
        } else {
            AfterToken::Orphaned
        }
    }

    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// The prompt's logprobs, computed with its prefill.
    pub fn on_prompt_logprobs(&self, logprobs: Vec<Option<TokenLogprobs>>) {
        self.send(SeqEvent::PromptLogprobs(logprobs));
    }

    /// The engine finished the sequence: flush the detokenizer and report why.
    pub fn on_finished(&mut self, tokenizer: &Tokenizer, output: &RequestOutput) -> Finish {
        let finish = match (&output.error, output.finish_reason) {
            (Some(e), _) => Finish::Error(e.clone()),
            (None, FinishReason::Eos | FinishReason::Stop) => Finish::Stop,
            (None, FinishReason::Length) => Finish::Length,
            (None, FinishReason::Abort) => Finish::Abort,
        };
        let tail = self.detokenizer.finish(tokenizer).unwrap_or_default();
        self.finish(tail, finish.clone());
        finish
    }

    /// The sequence has left the engine, ended as `label`: counts it, observes its
    /// latency, and logs its line.
    pub fn retire(&self, request_id: RequestId, label: FinishLabel, metrics: &Metrics) {
        let elapsed = self.arrival.elapsed();
        metrics.count_finished(label);
        metrics.observe_e2e(elapsed);
        tracing::info!(
            "{}",
            finished_line(
                request_id,
                self.prompt_len,
                self.num_generated,
                elapsed,
                label
            )
        );
    }

    /// Ends the sequence with `finish` (server-side abort, engine failure).
    pub fn finish(&mut self, text: String, finish: Finish) {
        self.send(SeqEvent::Finished { text, finish });
    }

    fn send(&self, event: SeqEvent) -> bool {
        self.events
            .send(ChoiceEvent {
                choice: self.choice,
                event,
            })
            .is_ok()
    }
}

/// Whether a finished output ended on its last token as an end-of-sequence token or one of
/// the request's `stop_token_ids` (whose text is not shown). A completed grammar also
/// finishes as `Stop`, but on a token that is part of the output, whose text is shown.
pub fn ends_by_token(output: &RequestOutput, stop_token_ids: &[u32]) -> bool {
    match output.finish_reason {
        FinishReason::Eos => true,
        FinishReason::Stop => output
            .token_ids
            .last()
            .is_some_and(|token| stop_token_ids.contains(token)),
        FinishReason::Length | FinishReason::Abort => false,
    }
}

/// The log line of a finished sequence.
pub fn finished_line(
    request_id: RequestId,
    prompt_tokens: usize,
    completion_tokens: usize,
    elapsed: Duration,
    label: FinishLabel,
) -> String {
    format!(
        "request {request_id} finished: prompt_tokens {prompt_tokens}, completion_tokens \
         {completion_tokens}, time {:.3} s, finish_reason {}",
        elapsed.as_secs_f64(),
        label.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(finish_reason: FinishReason, token_ids: Vec<u32>) -> RequestOutput {
        RequestOutput {
            request_id: 1,
            prompt_token_ids: vec![1],
            token_ids,
            text: String::new(),
            finish_reason,
            num_cached_tokens: 0,
            error: None,
            prompt_logprobs: None,
        }
    }

    #[test]
    fn only_eos_and_stop_token_ids_hide_the_last_token() {
        assert!(ends_by_token(&output(FinishReason::Eos, vec![5, 9]), &[]));
        assert!(ends_by_token(&output(FinishReason::Stop, vec![5, 7]), &[7]));
        // A grammar that completed on token 8: its text is part of the output.
        assert!(!ends_by_token(
            &output(FinishReason::Stop, vec![5, 8]),
            &[7]
        ));
        assert!(!ends_by_token(&output(FinishReason::Length, vec![7]), &[7]));
    }

    #[test]
    fn the_finished_line_names_everything() {
        assert_eq!(
            finished_line(7, 12, 3, Duration::from_millis(1500), FinishLabel::Length),
            "request 7 finished: prompt_tokens 12, completion_tokens 3, time 1.500 s, \
             finish_reason length"
        );
    }
}
