//! The fatbins `build.rs` compiled from `kernels/*.cu`: `FATBINS: &[(file stem, bytes)]`.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
