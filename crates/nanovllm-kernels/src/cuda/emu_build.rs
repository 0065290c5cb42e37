//! Building a host emulator of a `.cu` file (tests only): `tests/<name>/main.cpp` includes the
//! kernel source with CUDA's built-ins emulated by `tests/<name>/<name>.h`, compiled with the
//! host C++ compiler under ASan and UBSan (bounds and undefined behaviour in the kernels'
//! indexing fail the test).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `tests/{name}/main.cpp` with `defines` (`-D…` arguments) into `$OUT_DIR/{binary}`,
/// under a per-process name first and then renamed, so that concurrent test processes never
/// run a half-written binary. No C++ compiler is `Err` (the caller skips); a compiler that
/// fails on the kernels panics (a failure, not a skip).
pub(crate) fn build_emulator(
    name: &str,
    binary: &str,
    defines: &[String],
) -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let out = Path::new(env!("OUT_DIR")).join(binary);
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let output = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O1",
            "-g",
            "-Wno-unknown-pragmas",
            "-pthread",
        ])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
        .args(defines)
        .arg("-I")
        .arg(dir.join("tests").join(name))
        .arg("-I")
        .arg(dir.join("kernels"))
        .arg(dir.join("tests").join(name).join("main.cpp"))
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("no C++ compiler to emulate the kernels ({cxx}: {e})"))?;
    if !output.status.success() {
        panic!(
            "building the {name} emulator failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("installing the emulator: {e}"))?;
    Ok(out)
}
