//! A local store that ran out of space says so, with the free space of its file system: a
//! failed write's error names the object (as every sink error does), the cause and what is
//! left, so an operator sees at once that the disk is full, not that the store is broken.

use std::path::Path;

/// Whether `e`, or an error it was caused by, is "no space left on device" (or a quota).
pub(super) fn is_out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || io.raw_os_error() == Some(libc::ENOSPC)
                || io.raw_os_error() == Some(libc::EDQUOT)
            {
                return true;
            }
        }
        current = err.source();
    }
    false
}

/// Bytes available to an unprivileged writer and the size of the file system holding `path`.
pub(super) fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let unit = stat.f_frsize as u64;
    Some((stat.f_bavail as u64 * unit, stat.f_blocks as u64 * unit))
}

/// "no space left on ROOT: N bytes free of M", as far as the file system says.
pub(super) fn describe(root: &Path) -> String {
    match free_space(root) {
        Some((free, total)) => format!(
            "no space left on {}: {free} bytes free of {total}",
            root.display()
        ),
        None => format!("no space left on {}", root.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_found_down_the_chain_and_nothing_else_is() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing the pack")]
        struct Outer(#[source] std::io::Error);
        let full = Outer(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(is_out_of_space(&full));
        let denied = Outer(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!is_out_of_space(&denied));
        let (free, total) = free_space(Path::new("/")).expect("statvfs of /");
        assert!(total > 0 && free <= total);
        assert!(describe(Path::new("/")).contains("bytes free of"));
    }
}
