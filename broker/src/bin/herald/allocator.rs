//! The binary's memory allocator (feature `jemalloc`, on by default).
//!
//! Why not the system's: glibc's malloc keeps what thousands of closed connections
//! freed in its per-thread arenas, so a node's RSS stayed at its peak forever, and
//! small long-lived allocations (a session, its subscription) scattered among the
//! handshake's short-lived buffers kept whole pages from being reused. jemalloc
//! separates allocations by size class, and its background thread returns pages
//! that stayed unused for its decay time (10 s) to the system: RSS goes back down
//! after a wave of connections closes (docs/architecture.md, "Memory";
//! docs/benchmarks.md measures both).
//!
//! Only the binary sets it: an application that embeds the library keeps its own.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background purging. Without it freed pages are only returned
/// when the allocator is next called on the thread that freed them, which an idle
/// node never does.
pub(crate) fn start() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background thread did not start: freed memory is returned to the system only as allocations go on");
    }
}
