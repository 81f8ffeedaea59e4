//! Whether the coordinator may still create files in its state directory's folders. An
//! operator's `chmod` or `chown` (or an immutable attribute, `chattr +i`) takes that away while
//! the files already open still write: new upload and results segments then fail with
//! `EACCES` or `EPERM`, which no retry heals.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// True for the errors of a permission taken away (`EACCES`, `EPERM`).
pub fn is_permission_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// The first of `dirs` that the coordinator may not create files in, and why, naming the
/// folder but not its path (`access` with write and search permission, as the kernel would
/// judge a create); a folder that cannot be asked for another reason (gone, a failing disk) is
/// left to the errors of its writes.
pub fn first_denied<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Option<String> {
    dirs.into_iter().find_map(|dir| {
        let e = access_refused(dir, libc::W_OK | libc::X_OK)?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        Some(format!(
            "the coordinator may not create files in the state directory's {name}/ folder \
             ({e}): give its user write permission on it back"
        ))
    })
}

/// Why `access(2)` refuses `mode` (`libc::W_OK`, ...) on `path` for a want of permission
/// (`EACCES`, `EPERM`); None when it grants it, or cannot be asked for another reason (gone,
/// a failing disk), which is left to the errors of the file's use.
pub fn access_refused(path: &Path, mode: libc::c_int) -> Option<io::Error> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `access` only reads the NUL-terminated path.
    if unsafe { libc::access(path.as_ptr(), mode) } == 0 {
        return None;
    }
    Some(io::Error::last_os_error()).filter(is_permission_denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_folder_is_not_denied_and_a_missing_one_is_left_to_its_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(first_denied([dir.path()]), None);
        assert_eq!(first_denied([Path::new("/no/such/dir")]), None);
        assert!(is_permission_denied(&io::Error::from_raw_os_error(
            libc::EACCES
        )));
        assert!(!is_permission_denied(&io::Error::from_raw_os_error(
            libc::ENOSPC
        )));
    }
}
