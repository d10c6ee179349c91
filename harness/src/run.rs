//! Identity of this test process, stamped on everything it creates so that a sweep can tell
//! what a dead process left behind from what a live one is still using.

use std::collections::HashMap;

/// Every container and network the harness creates carries this label (value: creator's pid).
pub const OWNER_LABEL: &str = "org.bottle.harness.pid";

pub fn labels() -> HashMap<String, String> {
    HashMap::from([(OWNER_LABEL.to_string(), std::process::id().to_string())])
}

/// A short unique suffix for names: pid plus a process-wide counter.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `work` to its end on a short-lived runtime on another thread: how `Drop` removes what a
/// test made, from inside a Tokio runtime or after it (e.g. while a panic unwinds).
pub fn block_on_thread<F>(work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for removal")
            .block_on(work)
    })
    .join();
}
