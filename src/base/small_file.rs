//! Reading a small file whole (a PEM certificate or key, a workers or keys file), at most a set
//! number of bytes: a path that names something endless (`/dev/zero`, a FIFO a program keeps writing)
//! or a file far larger than its kind ever is must not take the process's memory. Read without
//! a bound, `--workers /dev/zero` grew the coordinator by 8 GB in 3 s at start (and a reload
//! would have done the same to a running one).

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a small file was not read.
#[derive(Debug)]
pub enum SmallFileError {
    /// It could not be opened or read.
    Unreadable(io::Error),
    /// It holds more than the bound (this many bytes).
    TooLarge(u64),
    /// It is a FIFO or a socket: whatever writes it decides when it ends, if ever.
    NotAFile,
}

impl fmt::Display for SmallFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(e) => write!(f, "{e}"),
            Self::TooLarge(max) => write!(
                f,
                "the file is larger than {max} bytes, more than such a file ever holds"
            ),
            Self::NotAFile => {
                f.write_str("it is a FIFO or a socket, not a file: name the file itself")
            }
        }
    }
}

/// The bytes of the file at `path`, or [`SmallFileError::TooLarge`] once it holds more than
/// `max`.
pub fn read_at_most(path: &Path, max: u64) -> Result<Vec<u8>, SmallFileError> {
    // Opened without waiting: opening a FIFO for reading waits for a writer, for good when
    // none comes. It is refused then, before any read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(SmallFileError::Unreadable)?;
    let kind = file
        .metadata()
        .map_err(SmallFileError::Unreadable)?
        .file_type();
    if kind.is_fifo() || kind.is_socket() {
        return Err(SmallFileError::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(SmallFileError::Unreadable)?;
    if bytes.len() as u64 > max {
        return Err(SmallFileError::TooLarge(max));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::read_at_most;
    use std::path::Path;

    #[test]
    fn an_endless_file_is_refused_at_its_bound() {
        let refused = read_at_most(Path::new("/dev/zero"), 4096).expect_err("endless");
        assert!(
            refused.to_string().contains("larger than 4096 bytes"),
            "{refused}"
        );
        let dir = std::env::temp_dir().join(format!("tp-small-file-{}", std::process::id()));
        std::fs::write(&dir, b"abc").expect("write");
        assert_eq!(read_at_most(&dir, 3).expect("read"), b"abc");
        let fifo = std::env::temp_dir().join(format!("tp-small-fifo-{}", std::process::id()));
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let refused = read_at_most(&fifo, 4096).expect_err("a FIFO");
            assert!(refused.to_string().contains("FIFO"), "{refused}");
            let _ = std::fs::remove_file(&fifo);
        }
        assert!(read_at_most(&dir, 2).is_err());
        let _ = std::fs::remove_file(dir);
    }
}
