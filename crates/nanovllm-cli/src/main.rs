//! `nanovllm`: the command-line front end. It owns argument parsing and
//! input/output formats only; everything it runs lives in nanovllm-core.

fn main() {}
