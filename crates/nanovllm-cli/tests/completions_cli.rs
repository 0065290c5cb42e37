//! End-to-end tests of `nanovllm completions SHELL`: the real binary prints, for every
//! shell clap_complete supports, a script that completes the subcommands and their flags
//! (including enum values), and refuses an unknown shell with clap's usage error.

mod common;

use common::*;

const SHELLS: [&str; 5] = ["bash", "zsh", "fish", "powershell", "elvish"];

/// Names every completion script must carry: the subcommands, flags shared through the
/// engine flags, one flag of `serve` alone, and the values of a value-enum flag.
const NAMES: [&str; 9] = [
    "generate",
    "serve",
    "chat",
    "bench",
    "max-model-len",
    "tensor-parallel-size",
    "api-key",
    "kv-cache-dtype",
    "safetensors",
];

#[test]
fn every_shell_gets_a_script_naming_the_subcommands_and_flags() {
    for shell in SHELLS {
        let out = nanovllm(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(out.stderr.is_empty(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8(out.stdout).expect("a UTF-8 script");
        assert!(script.contains("nanovllm"), "{shell}: {script}");
        for name in NAMES {
            assert!(script.contains(name), "{shell}: no {name:?} in\n{script}");
        }
    }
}

#[test]
fn bash_script_registers_the_completion_function() {
    let out = nanovllm(&["completions", "bash"]);
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("complete -F _nanovllm"), "{script}");
}

#[test]
fn unknown_shell_is_a_usage_error_listing_the_shells() {
    let out = nanovllm(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
    for shell in SHELLS {
        assert!(err.contains(shell), "{err}");
    }
}

#[test]
fn missing_shell_is_a_usage_error() {
    let out = nanovllm(&["completions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("<SHELL>"), "{}", stderr(&out));
}
