//! Stop strings: [`StopStrings`] compiles a request's stop strings once
//! (shared by its choices), and a [`StopMatcher`] per choice finds them in
//! text that arrives in pieces (one token's text at a time), so a stop string
//! split across tokens is found.
//!
//! This runs in the request's own task (see `generation`), never on the engine
//! thread, and its cost per piece does not grow with the text: finding a stop
//! string scans the new piece plus the `longest stop - 1` bytes before it (a
//! match must end in the new piece); the held-back length comes from an
//! automaton state advanced over the new bytes only.
//!
//! Invariants: `text` is everything received, cut just before the first stop
//! string once one is found; `text[..emitted]` has been handed out. Text that
//! could still turn out to be the start of a stop string (the longest suffix of
//! `text` that is a proper prefix of one) is held back until the next piece
//! decides, so emitted text never contains any part of a stop string. Within
//! one piece the match that starts first wins.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::noncontiguous;
use aho_corasick::{AhoCorasick, Anchored, MatchKind};

use super::errors::ApiError;

/// Most stop strings one request may give. vLLM accepts any number, but every
/// one costs automaton memory and build time: 1024 is far beyond real use.
pub const MAX_STOP_STRINGS: usize = 1024;
/// Most bytes all stop strings of a request may add up to (64 KiB).
pub const MAX_STOP_BYTES: usize = 64 << 10;

/// The compiled stop strings of one request.
#[derive(Debug)]
pub struct StopStrings {
    /// Finds the leftmost-starting stop string in a window.
    finder: AhoCorasick,
    /// Its state after some text is the longest suffix of that text that is a
    /// prefix of a stop string (standard Aho-Corasick semantics).
    prefixes: noncontiguous::NFA,
    /// The length in bytes of that suffix, for every state of `prefixes`.
    depth: HashMap<StateID, usize>,
    start: StateID,
    /// The longest stop string's length in bytes.
    max_len: usize,
}

impl StopStrings {
    /// Checks the limits and compiles `stops` (non-empty strings); `None` when there are none.
    pub fn new(stops: &[String]) -> Result<Option<Arc<Self>>, ApiError> {
        if stops.is_empty() {
            return Ok(None);
        }
        let total: usize = stops.iter().map(String::len).sum();
        if stops.len() > MAX_STOP_STRINGS || total > MAX_STOP_BYTES {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "stop holds {} strings of {total} bytes in all; this server allows at most {MAX_STOP_STRINGS} strings of {MAX_STOP_BYTES} bytes in all: send fewer or shorter stop strings",
                    stops.len()
                ),
            ));
        }
        let build_error = |e: aho_corasick::BuildError| {
            ApiError::invalid("stop", format!("cannot compile the stop strings: {e}"))
        };
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(stops)
            .map_err(build_error)?;
        let prefixes = noncontiguous::NFA::builder()
            .match_kind(MatchKind::Standard)
            .build(stops)
            .map_err(build_error)?;
        let start = prefixes
            .start_state(Anchored::No)
            .map_err(|e| ApiError::Internal(format!("stop strings: {e}")))?;
        // Every state but the start lies on some stop string's path through the
        // trie, where each byte takes a forward (never a failure) transition.
        let mut depth = HashMap::from([(start, 0)]);
        for stop in stops {
            let mut sid = start;
            for (i, &b) in stop.as_bytes().iter().enumerate() {
                sid = prefixes.next_state(Anchored::No, sid, b);
                depth.insert(sid, i + 1);
            }
        }
        Ok(Some(Arc::new(Self {
            finder,
            prefixes,
            depth,
            start,
            max_len: stops.iter().map(String::len).max().unwrap_or(0),
        })))
    }
}

#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Option<Arc<StopStrings>>,
    text: String,
    emitted: usize,
    /// `stops.prefixes`' state after `text`.
    state: Option<StateID>,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Option<Arc<StopStrings>>) -> Self {
        Self {
            state: stops.as_ref().map(|s| s.start),
            stops,
            ..Self::default()
        }
    }

    /// Whether a stop string was found (later pieces are ignored).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Appends `piece`; returns the newly emittable text and whether a stop string was hit
    /// (after which further pieces are ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let Some(stops) = self.stops.clone() else {
            return (piece.to_string(), false);
        };
        let old_len = self.text.len();
        self.text.push_str(piece);
        // A match must end inside the new piece, so it starts at most
        // `longest stop - 1` bytes before it.
        let window = old_len.saturating_sub(stops.max_len.saturating_sub(1));
        if let Some(m) = stops.finder.find(&self.text.as_bytes()[window..]) {
            // A stop string starts with a whole character, so this is a char boundary.
            let cut = floor_char_boundary(&self.text, window + m.start());
            self.text.truncate(cut);
            self.stopped = true;
            return (self.take(self.text.len()), true);
        }
        let mut state = self.state.unwrap_or(stops.start);
        for &b in &self.text.as_bytes()[old_len..] {
            state = stops.prefixes.next_state(Anchored::No, state, b);
        }
        self.state = Some(state);
        let held = stops.depth.get(&state).copied().unwrap_or(0);
        let end = floor_char_boundary(&self.text, self.text.len() - held.min(self.text.len()));
        (self.take(end), false)
    }

    /// The end of the stream: everything not yet emitted (held-back text included).
    pub fn flush(&mut self) -> String {
        self.take(self.text.len())
    }

    /// Everything received so far, cut before the stop string.
    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hands out `text[emitted..end]`.
    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.emitted);
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

/// The largest char boundary of `text` at or before `i`.
fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        StopMatcher::new(StopStrings::new(&stops).unwrap())
    }

    /// Feeds `pieces`; returns the emitted text, and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for p in pieces {
            let (delta, stopped) = m.push(p);
            out.push_str(&delta);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_found_and_excluded() {
        assert_eq!(
            run(&["STOP"], &["Hello S", "T", "OP world"]),
            ("Hello ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
        assert_eq!(run(&["xyz", "yz"], &["wx", "yz"]), ("w".into(), true));
    }

    #[test]
    fn a_partial_match_is_held_back_then_released() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("foo E"), ("foo ".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("x"), ("ENx".into(), false));
        assert_eq!(m.push("E"), ("".into(), false));
        // The stream ends: the held-back prefix is plain text after all.
        assert_eq!(m.flush(), "E");
        assert_eq!(m.text(), "foo ENxE");
    }

    #[test]
    fn no_stop_strings_emit_everything_at_once() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("abc"), ("abc".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        assert_eq!(run(&["界!"], &["世", "界", "!"]), ("世".into(), true));
        let mut m = matcher(&["éé"]);
        assert_eq!(m.push("aé"), ("a".into(), false));
        assert_eq!(m.push("b"), ("éb".into(), false));
    }

    #[test]
    fn pieces_after_a_stop_are_ignored() {
        let mut m = matcher(&["x"]);
        assert_eq!(m.push("axb"), ("a".into(), true));
        assert_eq!(m.push("more"), ("".into(), true));
        assert_eq!(m.flush(), "");
    }

    /// Matches the naive definition for every split of a text into two pieces:
    /// output = text before the first occurrence of any stop string.
    #[test]
    fn every_split_point_agrees_with_the_naive_search() {
        let text = "the cat sat on the mat; the end";
        let stops = ["the end", "sat o", "mat;"];
        let naive_cut = stops.iter().filter_map(|s| text.find(s)).min().unwrap();
        for split in 0..=text.len() {
            let (out, stopped) = run(&stops, &[&text[..split], &text[split..]]);
            assert!(stopped, "split {split}");
            assert_eq!(out, &text[..naive_cut], "split {split}");
        }
        for split in 0..=text.len() {
            let (out, stopped) = run(&["nowhere"], &[&text[..split], &text[split..]]);
            assert!(!stopped);
            assert_eq!(out, text);
        }
    }

    /// The straightforward matcher this module replaced (every stop string searched in the
    /// window, every prefix of every stop string tried for the held-back text): the
    /// automata must emit exactly what it emits, piece by piece.
    fn naive(stops: &[&str], pieces: &[&str]) -> Vec<(String, bool)> {
        let longest = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let (mut text, mut emitted, mut out) = (String::new(), 0, Vec::new());
        for piece in pieces {
            let old_len = text.len();
            text.push_str(piece);
            let mut start = old_len.saturating_sub(longest.saturating_sub(1));
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            if let Some(pos) = stops.iter().filter_map(|s| text[start..].find(s)).min() {
                text.truncate(start + pos);
                out.push((text[emitted.min(text.len())..].to_string(), true));
                return out;
            }
            let held = stops
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .filter(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
                        .max()
                })
                .max()
                .unwrap_or(0);
            let end = (text.len() - held).max(emitted);
            out.push((text[emitted..end].to_string(), false));
            emitted = end;
        }
        out
    }

    #[test]
    fn agrees_with_the_naive_matcher_piece_by_piece() {
        // A small alphabet (with multi-byte characters) makes overlaps and partial
        // matches frequent; a fixed LCG keeps the cases reproducible.
        let alphabet = ["a", "b", "é", "界", " "];
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for case in 0..3000 {
            let word = |len: usize, next: &mut dyn FnMut(usize) -> usize| -> String {
                (0..len).map(|_| alphabet[next(alphabet.len())]).collect()
            };
            let num_stops = 1 + next(4);
            let stops: Vec<String> = (0..num_stops)
                .map(|_| word(1 + next(4), &mut next))
                .collect();
            let pieces: Vec<String> = (0..1 + next(8)).map(|_| word(next(4), &mut next)).collect();
            let stops_ref: Vec<&str> = stops.iter().map(String::as_str).collect();
            let pieces_ref: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let expected = naive(&stops_ref, &pieces_ref);
            let mut m = matcher(&stops_ref);
            let got: Vec<(String, bool)> = pieces_ref
                .iter()
                .take(expected.len())
                .map(|p| m.push(p))
                .collect();
            assert_eq!(
                got, expected,
                "case {case}: stops {stops:?}, pieces {pieces:?}"
            );
        }
    }

    #[test]
    fn the_limits_are_enforced_and_named() {
        let param = |e: ApiError| match e {
            ApiError::InvalidField { param, message } => (param.unwrap_or_default(), message),
            other => panic!("{other:?}"),
        };
        let too_many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| format!("s{i}")).collect();
        let (p, message) = param(StopStrings::new(&too_many).unwrap_err());
        assert_eq!(p, "stop");
        assert!(message.contains("at most 1024 strings"), "{message}");
        let too_long = vec!["x".repeat(MAX_STOP_BYTES + 1)];
        assert_eq!(param(StopStrings::new(&too_long).unwrap_err()).0, "stop");
        // The most allowed: 1024 strings of 64 bytes.
        let most: Vec<String> = (0..MAX_STOP_STRINGS).map(|i| format!("{i:064}")).collect();
        let mut m = StopMatcher::new(StopStrings::new(&most).unwrap());
        assert_eq!(
            m.push("0000"),
            ("".into(), false),
            "a prefix of a stop string is held"
        );
        assert_eq!(m.push("x"), ("0000x".into(), false));
        let (_, stopped) = m.push(&format!("{:064}", 17));
        assert!(stopped);
        assert_eq!(m.text(), "0000x");
    }
}
