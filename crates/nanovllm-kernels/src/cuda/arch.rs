//! GPU targets the kernels are compiled for, shared by `build.rs` (which includes this
//! file with `#[path]`) and the crate's unit tests. Plain std only.
//!
//! Default: cubins for sm_80 (A100) and sm_90a (H100, with its arch-specific features),
//! plus PTX for compute_90 so that newer GPUs can JIT it. `CUDA_COMPUTE_CAP` (e.g.
//! `80,90a` or `86`) replaces the cubin list; the PTX is for the highest listed
//! capability without its `a` suffix (PTX for an `a` target runs only on that exact GPU).

/// Cubin targets used when `CUDA_COMPUTE_CAP` is not set.
pub const DEFAULT_CUBIN_ARCHS: &[&str] = &["80", "90a"];

/// Parsed targets: the cubins to build and the one PTX to embed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub cubins: Vec<String>,
    pub ptx: String,
}

/// Parses a comma/space separated list like `80,90a` (`sm_` prefixes and dots, as in
/// `8.0`, are accepted). Errors name the offending entry.
pub fn parse_compute_caps(spec: &str) -> Result<Targets, String> {
    let mut cubins: Vec<String> = Vec::new();
    for raw in spec.split([',', ' ', ';']).filter(|s| !s.trim().is_empty()) {
        let entry = raw
            .trim()
            .trim_start_matches("sm_")
            .trim_start_matches("compute_")
            .replace('.', "");
        let digits = entry.trim_end_matches(['a', 'f']);
        let suffix = &entry[digits.len()..];
        let valid = !digits.is_empty()
            && digits.len() <= 3
            && digits.bytes().all(|b| b.is_ascii_digit())
            && suffix.len() <= 1
            && digits.parse::<u32>().map(|v| v >= 50).unwrap_or(false);
        if !valid {
            return Err(format!(
                "CUDA_COMPUTE_CAP entry `{}` is not a compute capability like 80, 86, 90a",
                raw.trim()
            ));
        }
        if !cubins.contains(&entry) {
            cubins.push(entry);
        }
    }
    if cubins.is_empty() {
        return Err(format!(
            "CUDA_COMPUTE_CAP=`{spec}` lists no compute capability (e.g. 80,90a)"
        ));
    }
    let highest = cubins.iter().map(|c| numeric(c)).max().unwrap_or_default();
    Ok(Targets {
        cubins,
        ptx: highest.to_string(),
    })
}

/// The targets for an optional `CUDA_COMPUTE_CAP` value.
pub fn targets(spec: Option<&str>) -> Result<Targets, String> {
    match spec {
        Some(s) => parse_compute_caps(s),
        None => parse_compute_caps(&DEFAULT_CUBIN_ARCHS.join(",")),
    }
}

/// `90a` → 90.
fn numeric(cap: &str) -> u32 {
    cap.trim_end_matches(['a', 'f']).parse().unwrap_or(0)
}

/// nvcc `-gencode` arguments for `targets`.
pub fn gencode_args(targets: &Targets) -> Vec<String> {
    let mut args = Vec::new();
    for cubin in &targets.cubins {
        args.push("-gencode".to_string());
        args.push(format!("arch=compute_{cubin},code=sm_{cubin}"));
    }
    args.push("-gencode".to_string());
    args.push(format!(
        "arch=compute_{ptx},code=compute_{ptx}",
        ptx = targets.ptx
    ));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_sm80_sm90a_plus_ptx90() {
        let t = targets(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.cubins, vec!["80", "90a"]);
        assert_eq!(t.ptx, "90");
        assert_eq!(
            gencode_args(&t),
            vec![
                "-gencode",
                "arch=compute_80,code=sm_80",
                "-gencode",
                "arch=compute_90a,code=sm_90a",
                "-gencode",
                "arch=compute_90,code=compute_90",
            ]
        );
    }

    #[test]
    fn override_accepts_prefixes_dots_and_dedups() {
        let t = parse_compute_caps(" sm_86, 8.0 ,86").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.cubins, vec!["86", "80"]);
        assert_eq!(t.ptx, "86");
    }

    #[test]
    fn override_rejects_garbage() {
        for bad in ["", ",", "ninety", "90b", "9", "1000", "80,x"] {
            assert!(
                parse_compute_caps(bad).is_err(),
                "`{bad}` should be rejected"
            );
        }
    }
}
