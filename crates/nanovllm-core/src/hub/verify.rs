//! Checks a downloaded file against what the hub's listing says about it: its size always,
//! and its sha256 when the hub gives one (LFS files: weights and large tokenizers). Small
//! files stored in git carry only a git blob id, which is not checked.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// What the hub says one file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub size: Option<u64>,
    /// Lowercase hex.
    pub sha256: Option<String>,
}

/// A mismatch: which property, expected and actual, as text for the error.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub what: &'static str,
    pub expected: String,
    pub actual: String,
}

/// Compares `path` (symlinks followed) with `expected`.
pub fn check(path: &Path, expected: &Expected) -> std::io::Result<Result<(), Mismatch>> {
    let size = std::fs::metadata(path)?.len();
    if let Some(want) = expected.size {
        if size != want {
            return Ok(Err(Mismatch {
                what: "size",
                expected: format!("{want} bytes"),
                actual: format!("{size} bytes"),
            }));
        }
    }
    if let Some(want) = &expected.sha256 {
        let got = sha256_of(path)?;
        if !got.eq_ignore_ascii_case(want) {
            return Ok(Err(Mismatch {
                what: "sha256",
                expected: want.clone(),
                actual: got,
            }));
        }
    }
    Ok(Ok(()))
}

/// The file's sha256 as lowercase hex, read in 1 MiB chunks.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_sha256_are_checked() {
        let path = std::env::temp_dir().join(format!("nanovllm-hub-verify-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_of(&path).unwrap(), abc);
        let ok = Expected {
            size: Some(3),
            sha256: Some(abc.to_uppercase()),
        };
        assert_eq!(check(&path, &ok).unwrap(), Ok(()));
        let short = Expected {
            size: Some(4),
            sha256: None,
        };
        assert_eq!(check(&path, &short).unwrap().unwrap_err().what, "size");
        let other = Expected {
            size: Some(3),
            sha256: Some("00".repeat(32)),
        };
        let err = check(&path, &other).unwrap().unwrap_err();
        assert_eq!((err.what, err.actual.as_str()), ("sha256", abc));
        std::fs::remove_file(&path).unwrap();
    }
}
