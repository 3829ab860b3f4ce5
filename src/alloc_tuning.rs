//! glibc malloc tuning for the relay's working set.
//!
//! Every recipient copy lives in a few 50-100 KB buffers (the prepared
//! message, the signed copy, the dot-stuffed DATA) that are freed as soon as
//! the copy is sent. With glibc's default trim threshold (128 KB), freeing
//! them at the top of a thread's arena gives the pages back to the kernel
//! (madvise), and the next copy takes a page fault for every 4 KB of them
//! again: about 7 % of the relay's CPU per message in bench/relay.sh
//! (bench/README.md, "CPU per message"). Keeping up to TRIM_THRESHOLD free
//! per arena removes that churn; memory in use is unchanged, only what
//! glibc keeps for reuse grows (bounded by this value per arena).

/// What the process keeps free at the top of an arena before returning it.
pub const TRIM_THRESHOLD: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// The trim threshold was set to [`TRIM_THRESHOLD`].
    Set,
    /// The operator's own `GLIBC_TUNABLES` names a malloc setting: theirs wins.
    LeftToOperator,
    /// Not glibc (or mallopt refused): the allocator's defaults stay.
    Unsupported,
}

/// Applies the tuning unless `glibc_tunables` (the `GLIBC_TUNABLES`
/// environment variable) already sets malloc parameters. Call once, before
/// threads start.
pub fn apply(glibc_tunables: Option<&str>) -> Tuning {
    if glibc_tunables.is_some_and(|t| t.contains("glibc.malloc.")) {
        return Tuning::LeftToOperator;
    }
    set_trim_threshold()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_trim_threshold() -> Tuning {
    let value = libc::c_int::try_from(TRIM_THRESHOLD).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // the runtime's threads start.
    if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) } == 1 {
        Tuning::Set
    } else {
        Tuning::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_trim_threshold() -> Tuning {
    Tuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_malloc_tunables_win() {
        let t = apply(Some("glibc.malloc.trim_threshold=131072"));
        assert_eq!(t, Tuning::LeftToOperator);
        let t = apply(Some("glibc.malloc.arena_max=2:glibc.pthread.rseq=0"));
        assert_eq!(t, Tuning::LeftToOperator);
    }

    #[test]
    fn applied_without_operator_malloc_tunables() {
        let want = if cfg!(all(target_os = "linux", target_env = "gnu")) {
            Tuning::Set
        } else {
            Tuning::Unsupported
        };
        assert_eq!(apply(None), want);
        assert_eq!(apply(Some("glibc.pthread.rseq=0")), want);
    }
}
