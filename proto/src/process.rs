//! Settings every server binary makes to its own process at start.

/// Turns transparent huge pages off for this process (on Linux; elsewhere
/// it does nothing).
///
/// mimalloc marks its arenas `MADV_HUGEPAGE`. On a kernel whose THP mode
/// is `madvise` (the usual default), every first touch of a 2 MiB stretch
/// then zeroes all of it, however little of it is used. A coordinator
/// replaying 100,000 undecided transactions spent 69% of its CPU in the
/// kernel's `clear_page_erms` (`perf`, BENCHMARKS.md), and was serving
/// again after 1.69–1.71 s with huge pages, 1.05–1.39 s without.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no
        // memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
