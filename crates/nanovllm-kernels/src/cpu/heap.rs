//! Keep freed op outputs in the heap for reuse (glibc).
//!
//! Every CPU op returns a freshly allocated tensor. glibc serves blocks above its mmap
//! threshold (128 KiB at first) with a new mapping and unmaps them on free, so a prefill
//! step's activations (tens of MiB per layer) were page-faulted in and zeroed by the
//! kernel op after op. Raising the mmap threshold to glibc's maximum (32 MiB on 64-bit)
//! and the trim threshold above it keeps those blocks in the heap, where the next op's
//! allocation finds them. Process-wide and only tuning: results never depend on it.

/// Applies the settings once per process (Linux with glibc; elsewhere nothing); called by
/// [`super::configure_process`].
pub(crate) fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            const MMAP_THRESHOLD: libc::c_int = 32 << 20;
            const TRIM_THRESHOLD: libc::c_int = 256 << 20;
            // SAFETY: mallopt only changes allocator parameters (glibc serialises it with
            // allocation); it runs once per process. A refusal leaves the defaults.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        });
    }
}

/// Returns free heap memory to the operating system (glibc's `malloc_trim`; elsewhere
/// nothing). The raised trim threshold keeps freed buffers during a burst of steps; once
/// the engine is idle they are worth nothing, and a large prompt's activations would
/// otherwise stay resident (measured: idle RSS 952 → 1157 MiB after rounds of 4 MB prompts).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory glibc holds as free; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
}
