//! The CPU backend's thread pool: how many threads (`--threads`, [`EngineConfig::threads`])
//! and the one place that sizes it.
//!
//! Every CPU op runs on rayon's global pool, which can be sized once per process, before
//! anything uses it. The default is the machine's physical cores: SMT siblings share one
//! core's FMA units, so a GEMM-bound step gains nothing from them and loses to the extra
//! synchronisation. A process that already runs a pool (a second engine in one process)
//! keeps it; asking for another size then is an error, since it cannot take effect.
//!
//! [`EngineConfig::threads`]: crate::EngineConfig::threads

use std::collections::HashSet;
use std::path::Path;

use crate::error::{EngineError, Result};

/// Physical cores this process may run on: distinct `core_cpus_list` (SMT sibling sets)
/// among the CPUs of `/sys/devices/system/cpu`, at most the CPUs this process may use
/// ([`std::thread::available_parallelism`], which follows affinity and cgroup quotas).
/// Falls back to that count where sysfs cannot be read (not Linux, a sandbox).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, usize::from);
    sibling_sets(Path::new("/sys/devices/system/cpu")).map_or(logical, |cores| cores.min(logical))
}

/// Distinct SMT sibling sets among `cpu_dir/cpu<N>/topology/`: `core_cpus_list` (Linux ≥
/// 5.3) or else `thread_siblings_list`. `None` when no CPU lists one.
fn sibling_sets(cpu_dir: &Path) -> Option<usize> {
    let mut sets = HashSet::new();
    for entry in std::fs::read_dir(cpu_dir).ok()?.flatten() {
        let name = entry.file_name();
        let is_cpu = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let topology = entry.path().join("topology");
        let siblings = std::fs::read_to_string(topology.join("core_cpus_list"))
            .or_else(|_| std::fs::read_to_string(topology.join("thread_siblings_list")));
        if let Ok(list) = siblings {
            sets.insert(list.trim().to_string());
        }
    }
    (!sets.is_empty()).then_some(sets.len())
}

/// Sizes rayon's global pool to `threads` (unset: [`physical_cores`]) unless a pool already
/// runs. An explicit size that differs from the running pool's is an error naming both.
pub fn configure_pool(threads: Option<usize>) -> Result<usize> {
    if threads == Some(0) {
        return Err(EngineError::InvalidConfig {
            field: "threads",
            value: "0".into(),
            expected: "an integer >= 1",
        });
    }
    let wanted = threads.unwrap_or_else(physical_cores);
    match rayon::ThreadPoolBuilder::new()
        .num_threads(wanted)
        .build_global()
    {
        Ok(()) => Ok(wanted),
        Err(_) => {
            // A pool runs already (an earlier engine in this process, or a caller's own).
            let running = rayon::current_num_threads();
            match threads {
                Some(t) if t != running => Err(EngineError::Unsupported {
                    what: format!(
                        "--threads {t}: this process already runs its CPU thread pool with \
                         {running} threads, and the pool can be sized once per process; \
                         start a new process to use {t}"
                    ),
                }),
                _ => Ok(running),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(name: &str, cpus: &[(&str, &str)]) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nanovllm-threads-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (cpu, siblings) in cpus {
            let topology = dir.join(cpu).join("topology");
            std::fs::create_dir_all(&topology).unwrap();
            std::fs::write(topology.join("core_cpus_list"), format!("{siblings}\n")).unwrap();
        }
        // Entries that are not CPUs are skipped.
        std::fs::create_dir_all(dir.join("cpufreq")).unwrap();
        std::fs::create_dir_all(dir.join("cpuidle")).unwrap();
        dir
    }

    #[test]
    fn smt_siblings_count_as_one_core() {
        // 2 cores with 2 hardware threads each: cpu0/cpu2 and cpu1/cpu3.
        let dir = fake_sysfs(
            "smt",
            &[
                ("cpu0", "0,2"),
                ("cpu1", "1,3"),
                ("cpu2", "0,2"),
                ("cpu3", "1,3"),
            ],
        );
        assert_eq!(sibling_sets(&dir), Some(2));
        let dir_no_smt = fake_sysfs("nosmt", &[("cpu0", "0"), ("cpu1", "1"), ("cpu2", "2")]);
        assert_eq!(sibling_sets(&dir_no_smt), Some(3));
        assert_eq!(sibling_sets(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir_no_smt);
    }

    #[test]
    fn physical_cores_is_at_least_one_and_at_most_the_usable_cpus() {
        let logical = std::thread::available_parallelism().map_or(1, usize::from);
        let cores = physical_cores();
        assert!((1..=logical).contains(&cores), "{cores} of {logical}");
    }

    #[test]
    fn a_running_pool_keeps_its_size_and_refuses_another() {
        // Whatever sized the pool first in this test process, it is running now.
        let running = configure_pool(None).unwrap();
        assert_eq!(running, rayon::current_num_threads());
        assert_eq!(configure_pool(Some(running)).unwrap(), running);
        let msg = configure_pool(Some(running + 1)).unwrap_err().to_string();
        assert!(msg.contains("sized once per process"), "{msg}");
        assert!(matches!(
            configure_pool(Some(0)),
            Err(EngineError::InvalidConfig {
                field: "threads",
                ..
            })
        ));
    }
}
