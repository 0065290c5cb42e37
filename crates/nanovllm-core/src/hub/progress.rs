//! A progress bar per downloaded file, on stderr. indicatif draws nothing when stderr is not
//! a terminal, so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// One file's bar, fed by hf-hub's [`hf_hub::api::Progress`] callbacks.
pub struct FileBar {
    bar: ProgressBar,
}

impl FileBar {
    pub fn new() -> Self {
        let style = ProgressStyle::with_template(
            "{msg:30!} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
        )
        .expect("a valid indicatif template")
        .progress_chars("=> ");
        Self {
            bar: ProgressBar::new(0).with_style(style),
        }
    }
}

impl Default for FileBar {
    fn default() -> Self {
        Self::new()
    }
}

impl hf_hub::api::Progress for FileBar {
    /// Called again, then `update(resumed_bytes)`, when a download resumes: start from zero.
    fn init(&mut self, size: usize, filename: &str) {
        self.bar.set_length(size as u64);
        self.bar.set_position(0);
        self.bar.set_message(filename.to_owned());
    }

    fn update(&mut self, size: usize) {
        self.bar.inc(size as u64);
    }

    fn finish(&mut self) {
        self.bar.finish();
    }
}
