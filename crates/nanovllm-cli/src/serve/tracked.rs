//! [`Tracked`]: what the engine thread keeps for one sequence in flight, and
//! the [`SeqEvent`]s it sends back to the HTTP handler that owns it.
//!
//! Every generated token yields exactly one `Token` event (its text may be
//! empty: a partial UTF-8 character); then exactly one `Finished` event
//! carries the remaining text and the reason. The text of a token that ended
//! the sequence as an end-of-sequence or stop token id is never shown (as vLLM
//! does). Stop strings are not looked for here but in the request's own task
//! (`generation`), so that they cost the engine thread nothing.

use std::time::Instant;

use nanovllm_core::{
    FinishReason, IncrementalDetokenizer, RequestOutput, TokenLogprobs, Tokenizer,
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
    pub fn new(choice: usize, events: UnboundedSender<ChoiceEvent>, prompt_ids: &[u32]) -> Self {
        Self {
            choice,
            events,
            detokenizer: IncrementalDetokenizer::new(prompt_ids),
            arrival: Instant::now(),
            last_token_at: None,
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

    /// The engine finished the sequence: flush the detokenizer and report why.
    pub fn on_finished(mut self, tokenizer: &Tokenizer, output: &RequestOutput) -> Finish {
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

/// Whether a finished output ended on its last token as eos / stop token id.
pub fn ends_by_token(reason: FinishReason) -> bool {
    matches!(reason, FinishReason::Eos | FinishReason::Stop)
}
