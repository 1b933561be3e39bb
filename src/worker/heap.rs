//! How a worker's C allocator hands memory back to the kernel.
//!
//! glibc's malloc gives the top of its heap back (`brk`/`madvise`) as soon as more than
//! 128 KiB of it is free, and a request that needs that memory again faults it back in page by
//! page. Serving a 1 MiB file does exactly that on every response. glibc raises its thresholds
//! by itself once a block large enough to be mapped on its own is freed, but only to that
//! block's size (twice it, for trimming): with ServeDir reading 128 KiB at a time, workers
//! without this setting still took about 95 page faults per 1 MiB response and served a quarter
//! fewer of them (wrk, 64 connections, two workers).
//!
//! A worker is a process of its own, recycled by the master when asked to, so it can keep a
//! few MiB of freed memory for the next request instead: the top of the heap is returned only
//! beyond [`TRIM_THRESHOLD`], and blocks below [`MMAP_THRESHOLD`] come from the heap. An
//! operator who sets glibc's own knobs (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TOP_PAD_` or `glibc.malloc.*` in `GLIBC_TUNABLES`) keeps them; applications with
//! another global allocator are not affected.
//!
//! What glibc keeps is only the top of the heap, though: memory a flood of connections took and
//! gave back in the middle of the heap, or in another thread's arena, stays resident for the
//! worker's life. [`release_free`] hands it back; [`super::reclaim`] decides when.

/// Free memory at the top of the heap kept rather than returned: 4 MiB.
const TRIM_THRESHOLD: usize = 4 << 20;

/// Blocks at least this large are mapped on their own: 1 MiB (glibc starts at 128 KiB).
const MMAP_THRESHOLD: usize = 1 << 20;

/// Applies the thresholds unless the environment sets malloc's own, and says whether prefork
/// manages the heap: glibc's malloc, not tuned by the operator.
pub(super) fn keep_freed_memory() -> bool {
    if !cfg!(all(target_os = "linux", target_env = "gnu"))
        || operator_tuned(|name| std::env::var_os(name))
    {
        return false;
    }
    set_thresholds();
    true
}

/// Whether the environment already tunes glibc's malloc.
fn operator_tuned(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let knobs = [
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TOP_PAD_",
    ];
    knobs.iter().any(|name| var(name).is_some())
        || var("GLIBC_TUNABLES").is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() {
    // Both values fit in a C int. mallopt only fails on an unknown parameter, and then the
    // defaults simply stay.
    // SAFETY: mallopt changes allocator parameters under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Returns every free page of every arena to the kernel, the top of the heap included.
/// `malloc_trim` walks each arena's free chunks and releases their pages under that arena's
/// lock, which holds up the worker: 5-15 ms to give back 36 MiB, 50 ms for 280 MiB (most of it
/// the kernel freeing the pages). It is for after a flood, not for every request.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) fn release_free() {
    // SAFETY: malloc_trim only releases pages of free chunks, under the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn release_free() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.into())
        }
    }

    #[test]
    fn untuned_environment_gets_the_thresholds() {
        assert!(!operator_tuned(env(&[])));
        assert!(!operator_tuned(env(&[(
            "GLIBC_TUNABLES",
            "glibc.pthread.rseq=0"
        )])));
    }

    #[test]
    fn operator_settings_are_kept() {
        assert!(operator_tuned(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(operator_tuned(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
        assert!(operator_tuned(env(&[("MALLOC_TOP_PAD_", "0")])));
        assert!(operator_tuned(env(&[(
            "GLIBC_TUNABLES",
            "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=0"
        )])));
    }
}
