//! The disk reserve (`--disk-reserve`): a submit is refused while its upload would leave less
//! room than the reserve on the state directory's filesystem, so that what the coordinator
//! already promised (the results of accepted jobs, their records) still finds room when a
//! flood of uploads, or another program, fills the disk. Elasticsearch's flood-stage disk
//! watermark is the model. The room is read with `statvfs` at each submit (a few
//! microseconds), as available to an unprivileged process; refusals are logged once per spell.

use crate::base::config::DiskReserveSetting;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The room on the state directory's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes an unprivileged process may still write.
    pub available: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
    /// The reserve in bytes.
    pub reserve: u64,
    /// Files (inodes) an unprivileged process may still create.
    pub inodes_available: u64,
    /// The filesystem's inodes (0 where it has no fixed number, as on btrfs).
    pub inodes_total: u64,
}

impl Room {
    /// Whether `incoming` more bytes would leave less than the reserve.
    pub fn is_short_for(&self, incoming: u64) -> bool {
        self.available.saturating_sub(incoming) < self.reserve
    }

    /// Whether no file can be created for want of inodes, however many bytes are free.
    pub fn out_of_inodes(&self) -> bool {
        self.inodes_total > 0 && self.inodes_available == 0
    }
}

/// The reserve of one state directory, and its refusals.
#[derive(Debug)]
pub struct DiskReserve {
    dir: PathBuf,
    setting: DiskReserveSetting,
    refusing: AtomicBool,
    refused: AtomicU64,
}

impl DiskReserve {
    /// The reserve `setting` of the filesystem that holds `dir`.
    pub fn new(dir: &Path, setting: DiskReserveSetting) -> Self {
        DiskReserve {
            dir: dir.to_path_buf(),
            setting,
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// The flag's value.
    pub fn setting(&self) -> DiskReserveSetting {
        self.setting
    }

    /// The room now (an error when the filesystem cannot be asked).
    pub fn room(&self) -> io::Result<Room> {
        let stats = filesystem_stats(&self.dir)?;
        let unit = stats.f_frsize as u64;
        let total = (stats.f_blocks as u64).saturating_mul(unit);
        Ok(Room {
            available: (stats.f_bavail as u64).saturating_mul(unit),
            total,
            reserve: self.setting.bytes_of(total),
            inodes_available: stats.f_favail as u64,
            inodes_total: stats.f_files as u64,
        })
    }

    /// Whether the filesystem has no inode left for a new file (checked whatever the reserve;
    /// false when it cannot be asked).
    pub fn out_of_inodes(&self) -> bool {
        self.room().is_ok_and(|room| room.out_of_inodes())
    }

    /// The room now, when `incoming` more bytes would cut into the reserve; `None` when they
    /// would not, without a reserve, or when the filesystem cannot be asked (a full disk is
    /// still answered when a write fails).
    pub fn shortfall(&self, incoming: u64) -> Option<Room> {
        if self.setting.is_none() {
            return None;
        }
        self.room().ok().filter(|room| room.is_short_for(incoming))
    }

    /// Whether a submit's upload of `incoming` bytes may be taken: `Err` with the room when it
    /// would cut into the reserve (counted, and logged when such a spell begins).
    pub fn admit(&self, incoming: u64) -> Result<(), Room> {
        if let Some(room) = self.shortfall(incoming) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if !self.refusing.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "Refusing submits: {} bytes are free on the state directory's filesystem, \
                     and an upload must leave the reserve of {} bytes (--disk-reserve {}) for the \
                     results of accepted jobs",
                    room.available,
                    room.reserve,
                    self.setting.describe()
                );
            }
            return Err(room);
        }
        if self.refusing.swap(false, Ordering::Relaxed) {
            let available = self.room().map_or(0, |r| r.available);
            log::info!(
                "Taking submits again: {available} bytes are free on the state directory's \
                 filesystem; {} submits were refused for want of room so far",
                self.refused.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }

    /// Submits refused for the reserve since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The `statvfs` figures of the filesystem holding `dir`.
fn filesystem_stats(dir: &Path) -> io::Result<libc::statvfs> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` only writes into `stats`, which is sized for it, and reads the
    // NUL-terminated path.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_read_from_the_filesystem_and_refuses_what_would_cut_into_it() {
        let dir = std::env::temp_dir();
        let none = DiskReserve::new(&dir, DiskReserveSetting::Bytes(0));
        assert_eq!(none.admit(u64::MAX), Ok(()));
        let room = none.room().unwrap_or_else(|e| panic!("statvfs: {e}"));
        assert!(room.total >= room.available && room.total > 0, "{room:?}");
        assert!(room.inodes_total >= room.inodes_available, "{room:?}");
        assert!(!none.out_of_inodes(), "{room:?}");
        let all = DiskReserve::new(&dir, DiskReserveSetting::Percent(50.0));
        assert_eq!(all.room().map(|r| r.reserve).ok(), Some(room.total / 2));
        let huge = DiskReserve::new(&dir, DiskReserveSetting::Bytes(room.total + 1));
        assert!(huge.admit(0).is_err());
        assert!(huge.admit(0).is_err());
        assert_eq!(huge.refused(), 2);
        let small = DiskReserve::new(&dir, DiskReserveSetting::Bytes(1));
        assert_eq!(small.admit(0), Ok(()));
        assert!(small.admit(u64::MAX).is_err());
        assert_eq!(small.admit(0), Ok(()));
        let missing = DiskReserve::new(Path::new("/no/such/dir"), DiskReserveSetting::Bytes(1));
        assert_eq!(missing.admit(u64::MAX), Ok(()));
    }
}
