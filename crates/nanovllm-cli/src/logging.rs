//! The one log set-up of every subcommand: `tracing` records on stderr.
//!
//! - Level: `info` for the nanovllm crates and `warn` for the dependencies by default;
//!   `-v` shows the nanovllm crates' debug records, `-vv` their trace records (and the
//!   dependencies' info); `-q` keeps warnings and errors only. `RUST_LOG`, when set, replaces
//!   all of this (the `EnvFilter` syntax, e.g. `RUST_LOG=nanovllm_core=debug`).
//! - Colour: ANSI escapes only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>), so piped and redirected logs are plain text.
//!
//! Progress bars stay indicatif's, drawn on stderr only when it is a terminal (and never
//! with `-q`): see [`progress_hidden`].

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How much the user asked to see, from the global `-v` / `-q` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// `-q`: warnings and errors only, no progress bars.
    Quiet,
    /// The default: the nanovllm crates' info records.
    Normal,
    /// `-v`: their debug records too.
    Debug,
    /// `-vv` (or more): their trace records too.
    Trace,
}

impl Verbosity {
    /// From the count of `-v` and the `-q` flag (clap makes them exclusive).
    pub fn from_flags(verbose: u8, quiet: bool) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Debug,
            (false, _) => Verbosity::Trace,
        }
    }

    /// The filter directives at this verbosity. `nanovllm` covers every crate of the
    /// project: a directive's target matches every target it is a prefix of
    /// (`nanovllm_core::engine`, the `nanovllm` binary's modules).
    pub fn directives(self) -> &'static str {
        match self {
            Verbosity::Quiet => "warn",
            Verbosity::Normal => "warn,nanovllm=info",
            Verbosity::Debug => "warn,nanovllm=debug",
            Verbosity::Trace => "info,nanovllm=trace",
        }
    }
}

/// Installs the stderr subscriber for the whole process. `RUST_LOG` (when set and
/// non-empty) overrides the flags; an invalid `RUST_LOG` falls back to the flags' level
/// after one warning that says what is wrong with it.
pub fn init(verbosity: Verbosity) {
    let (filter, bad_env) = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => match EnvFilter::try_new(&env) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(verbosity.directives()), Some((env, e))),
        },
        _ => (EnvFilter::new(verbosity.directives()), None),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .try_init();
    if let Some((env, e)) = bad_env {
        tracing::warn!("ignoring RUST_LOG={env:?} ({e}); logging at the -v/-q level instead");
    }
}

/// ANSI colour only on a terminal and without a non-empty `NO_COLOR`.
fn use_colour(stderr_is_terminal: bool, no_colour: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_colour.is_none_or(|v| v.is_empty())
}

/// Whether progress bars stay hidden: with `-q`, or when stderr is not a terminal (a
/// redirected log would fill with redraws).
pub fn progress_hidden(verbosity: Verbosity) -> bool {
    verbosity == Verbosity::Quiet || !std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_levels() {
        assert_eq!(Verbosity::from_flags(0, false), Verbosity::Normal);
        assert_eq!(Verbosity::from_flags(1, false), Verbosity::Debug);
        assert_eq!(Verbosity::from_flags(3, false), Verbosity::Trace);
        assert_eq!(Verbosity::from_flags(0, true), Verbosity::Quiet);
        for v in [
            Verbosity::Quiet,
            Verbosity::Normal,
            Verbosity::Debug,
            Verbosity::Trace,
        ] {
            assert!(EnvFilter::try_new(v.directives()).is_ok(), "{v:?}");
        }
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
