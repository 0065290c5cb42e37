//! [`StopMatcher`]: finds stop strings in text that arrives in pieces (one
//! token's text at a time), so a stop string split across tokens is found.
//!
//! Invariants: `text` is everything received, cut just before the first stop
//! string once one is found; `text[..emitted]` has been handed out. Text that
//! could still turn out to be the start of a stop string (the longest suffix of
//! `text` that is a proper prefix of one) is held back until the next piece
//! decides, so emitted text never contains any part of a stop string.

#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopMatcher {
    /// `stops` must be non-empty strings (the request validation ensures it).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Appends `piece`; returns the newly emittable text and whether a stop string was hit
    /// (after which further pieces are ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let old_len = self.text.len();
        self.text.push_str(piece);
        // A match must end inside the new piece, so it starts at most
        // `longest stop - 1` bytes before it.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut start = old_len.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.text[start..].find(s.as_str()))
            .min();
        if let Some(pos) = first_match {
            self.text.truncate(start + pos);
            self.stopped = true;
            return (self.take(self.text.len()), true);
        }
        let held = self.held_back();
        (self.take(self.text.len() - held), false)
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

    /// Length of the longest suffix of `text` that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&k| s.is_char_boundary(k) && self.text.ends_with(&s[..k]))
                    .max()
            })
            .max()
            .unwrap_or(0)
    }

    /// Hands out `text[emitted..end]`.
    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.emitted);
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns the emitted text, and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
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
        let mut m = StopMatcher::new(vec!["END".into()]);
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
        let mut m = StopMatcher::new(Vec::new());
        assert_eq!(m.push("abc"), ("abc".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        assert_eq!(run(&["界!"], &["世", "界", "!"]), ("世".into(), true));
        let mut m = StopMatcher::new(vec!["éé".into()]);
        assert_eq!(m.push("aé"), ("a".into(), false));
        assert_eq!(m.push("b"), ("éb".into(), false));
    }

    #[test]
    fn pieces_after_a_stop_are_ignored() {
        let mut m = StopMatcher::new(vec!["x".into()]);
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
}
