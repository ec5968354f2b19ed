//! How the daemon has glibc's malloc place large buffers. A snapshot's serialized core
//! (tens of megabytes at a million leases), redb's transaction pages and the batches
//! moved into redb come and go on the event loop and on blocking threads. By default
//! glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB),
//! so the next buffers of that size come from the heaps of whichever threads allocate
//! them, and stay resident there as free space the core's small allocations never fill.
//! A fixed threshold keeps every block of 128 KiB or more in a mapping of its own,
//! returned to the system when freed. netkey-bench at 1,000,000 leases: 208-210 bytes of
//! resident memory per lease after the checkout storm with the default, 165 with the
//! threshold fixed, and a lower peak (519 MiB against 542 MiB at 1.2M leases).

/// Blocks of at least this many bytes get mappings of their own (glibc's initial value).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 << 10;

/// Fixes malloc's mmap threshold. Call it first thing in `main`, before any other thread
/// starts: glibc documents `mallopt` as unsafe to call while other threads allocate.
/// Elsewhere than glibc there is nothing to set.
///
/// Its cost in CPU was not measurable here: two A/B pairs of durable checkouts (the
/// schema-3 build with and without `MALLOC_MMAP_THRESHOLD_=131072`, netkeyd's task-clock
/// over 100,000 heartbeats and 200,000 checkouts at 200,000 leases) differed by +2.7 %
/// and +5.7 %, within the spread of identical runs, and strace counted no mmap or munmap
/// at all in two seconds of durable checkouts, so no buffer of a batch crosses it.
#[allow(unsafe_code)]
pub fn fix_mmap_threshold() {
    // SAFETY: a plain C call with no pointers; the caller runs it before other threads
    // exist, as mallopt requires. It cannot fail for a value within glibc's bounds.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
