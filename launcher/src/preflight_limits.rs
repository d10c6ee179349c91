//! What an engine and a machine need to run bottles. `.cargo/preflight` checks the same limits
//! before the first compile, in shell: keep the two in step.

/// Docker 20.10's API: `inhibit_ipv4`, volume driver options and the calls bottle makes.
pub const MIN_API: (u32, u32) = (1, 41);
/// What the engine needs for a bottle (mitmproxy, the scanner, the agent) with room to work.
pub const MIN_MEMORY_BYTES: i64 = 2 << 30;
/// Free space under the engine's root: the images are about 2 GB, and their builds need as
/// much again while they run.
pub const MIN_FREE_TO_BUILD: u64 = 5 << 30;
/// Free space when the images are there: containers, volumes and logs.
pub const MIN_FREE_TO_RUN: u64 = 1 << 30;

/// Whether an engine's API version (`1.41`) is at least [`MIN_API`].
pub fn api_enough(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= MIN_API
}

/// Free bytes of the filesystem holding `path`, when it is on this machine (a remote engine's
/// storage cannot be seen from here: None).
pub fn free_bytes(path: &str) -> Option<u64> {
    let c_path = std::ffi::CString::new(path).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a pointer to writable memory of the right size.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}
