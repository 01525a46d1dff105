//! Giving freed memory back to the system between jobs.
//!
//! glibc's malloc keeps what a job frees in its arenas (one per thread that
//! allocated, up to 8 a core), and its mmap threshold rises to the largest
//! block freed, so that later tensors come from those arenas too. With
//! images of many sizes the free pages scatter and resident memory grows
//! request after request (measured in BENCHMARKS.md, *Memory over many
//! requests*). `malloc_trim` hands every arena's free pages back; after a
//! job, so that no step pays for it.

/// Hands the allocator's free pages back to the system; a no-op where the
/// allocator is not glibc's.
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only reads and updates the allocator's own
        // state, under its locks; any thread may call it at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(elapsed = ?started.elapsed(), released = released != 0, "malloc_trim after a job");
    }
}
