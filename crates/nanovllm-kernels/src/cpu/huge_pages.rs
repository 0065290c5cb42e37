//! Transparent huge pages for big CPU buffers (the KV cache).
//!
//! Attention reads one KV head's slice of each slot row: a few cache lines, then a jump
//! of a whole row (4 KiB in an f32 Qwen3-0.6B cache), so with 4 KiB pages nearly every
//! row is a TLB miss and a page walk. With 2 MiB pages the TLB covers the cache.
//!
//! Linux only, and only advice (`madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned part of
//! the buffer): where huge pages are disabled or unavailable nothing changes. It takes
//! effect as pages are first touched, so it is given right after a zeroed allocation
//! (whose big blocks are fresh, untouched mappings).

/// Buffers at least this big get the advice.
const MIN_BYTES: usize = 8 << 20;

/// Asks for huge pages under `buf` (see the module docs).
pub(crate) fn advise<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let len = std::mem::size_of_val(buf);
        if len < MIN_BYTES {
            return;
        }
        let start = buf.as_mut_ptr() as usize;
        let first = start.next_multiple_of(HUGE_PAGE);
        let end = (start + len) / HUGE_PAGE * HUGE_PAGE;
        if end > first {
            // SAFETY: [first, end) lies inside `buf`, which this call borrows mutably;
            // the advice changes how pages are backed, never their contents. A failure
            // (huge pages disabled) leaves the buffer as it was, so it is ignored.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (buf, MIN_BYTES);
}
