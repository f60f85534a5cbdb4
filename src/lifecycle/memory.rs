//! The process's memory allocator settings.

/// glibc hands the top of a heap back to the kernel as soon as 128 KiB of it is free, and the
/// kernel zero-fills those pages again at their next touch. Request and response bodies are
/// freed on another thread than the one that allocated them (hyper's read buffer, allocated on
/// the I/O thread, goes when a Python thread drops the request; a response `bytes` goes after
/// the I/O thread wrote it), so with many bodies in flight the tops of the heaps swing by
/// megabytes: a 64 KiB echo at 64 connections paid about 8 page faults per request, a third of
/// its CPU. Up to 8 MiB free at the top of a heap is kept instead, and blocks up to 4 MiB come
/// from the heaps rather than from mmap: where glibc's own sliding threshold settles once a
/// 4 MiB block has been freed, fixed from the start (fixed also means it no longer slides:
/// larger blocks are always mmapped). The cost is memory kept after a burst: for that echo,
/// about 15 MiB more at the peak and 20 MiB more held afterwards. The user's own malloc
/// settings win.
pub(super) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let env = |name: &str| std::env::var(name).ok();
        if user_sets_malloc_thresholds(env) {
            return;
        }
        // Safety: mallopt only sets glibc's allocator parameters; it takes its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 << 20;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 8 << 20;

/// Whether the environment already sets glibc's trim or mmap threshold (`MALLOC_*_` or
/// `GLIBC_TUNABLES`).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn user_sets_malloc_thresholds(env: impl Fn(&str) -> Option<String>) -> bool {
    env("MALLOC_TRIM_THRESHOLD_").is_some()
        || env("MALLOC_MMAP_THRESHOLD_").is_some()
        || env("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc.trim_threshold") || t.contains("glibc.malloc.mmap_threshold"))
}

#[cfg(test)]
mod tests {
    use super::user_sets_malloc_thresholds;

    #[test]
    fn the_users_malloc_thresholds_win() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert!(!user_sets_malloc_thresholds(with(&[])));
        assert!(!user_sets_malloc_thresholds(with(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")])));
        assert!(user_sets_malloc_thresholds(with(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0")])));
        assert!(user_sets_malloc_thresholds(with(&[("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")])));
        assert!(user_sets_malloc_thresholds(with(&[("MALLOC_TRIM_THRESHOLD_", "131072")])));
        assert!(user_sets_malloc_thresholds(with(&[("MALLOC_MMAP_THRESHOLD_", "131072")])));
    }
}
