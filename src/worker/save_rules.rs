//! How a sandrun worker saves a `files` part in a job's directory, where that is not under the
//! part's own filename (its `save_files`): a part whose content begins with its web frontend's
//! "fake tar" line is written under the name on that line, and else a part whose filename holds
//! an archive's extension anywhere is unpacked as that archive.

/// How a "fake tar" begins: sandrun writes the content after its first blank line under the
/// name that follows `Path: `, whatever the part's filename.
const FAKE_TAR_MARK: &[u8] = b"----Tar\nPath:";

/// The most of a file's first bytes [`fake_tar_name`] needs: the mark, a space, a name of
/// `max_name` bytes and its newline.
pub fn fake_tar_head(max_name: usize) -> u64 {
    (FAKE_TAR_MARK.len() + 1 + max_name + 1) as u64
}

/// What sandrun makes of a file that begins with `head` (its first bytes, at least
/// [`fake_tar_head`] of them when there are that many).
#[derive(Debug, PartialEq, Eq)]
pub enum FakeTar<'a> {
    /// No fake tar: the file is saved as its filename says.
    No,
    /// A fake tar written under this name (everything up to the newline after `Path: `).
    Named(&'a str),
    /// A fake tar whose name cannot be read from `head`: no space after `Path:` (sandrun then
    /// looks for `Path: ` further on, or takes bytes of the mark for the name), no newline
    /// within `head`, or a name that is not UTF-8. The line as far as `head` holds it.
    Unreadable(String),
}

/// What sandrun makes of a file that begins with `head`.
pub fn fake_tar_name(head: &[u8]) -> FakeTar<'_> {
    let Some(rest) = head.strip_prefix(FAKE_TAR_MARK) else {
        return FakeTar::No;
    };
    let line_end = rest.iter().position(|&b| b == b'\n');
    let named = rest
        .strip_prefix(b" ")
        .and_then(|name| name.get(..line_end? - 1))
        .and_then(|name| std::str::from_utf8(name).ok());
    match named {
        Some(name) => FakeTar::Named(name),
        None => {
            let line = &rest[..line_end.unwrap_or(rest.len())];
            FakeTar::Unreadable(String::from_utf8_lossy(line).into_owned())
        }
    }
}

/// Archive extensions sandrun looks for anywhere in a file's name, in its order.
const ARCHIVE_KINDS: [&str; 3] = [".tar.gz", ".tgz", ".zip"];

/// The bytes sandrun writes for a fake tar `data` (see [`fake_tar_name`]): all that follows its
/// first blank line, or from its second byte without one (sandrun adds 2 to `find`'s `npos`).
pub fn fake_tar_content(data: &[u8]) -> &[u8] {
    let blank = data.windows(2).position(|w| w == b"\n\n");
    &data[blank.map_or(1, |at| at + 2).min(data.len())..]
}

/// How sandrun unpacks a file it takes for an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpacker {
    /// `tar -xzf`, for a name holding `.tar.gz` or `.tgz`.
    Tar,
    /// `unzip`, for a name holding `.zip` (and neither of those).
    Zip,
}

/// How sandrun would unpack a file named `name` (not a fake tar), if it takes it for an
/// archive: by the extensions anywhere in its name, a tarball's first.
pub fn unpacker(name: &str) -> Option<Unpacker> {
    match ARCHIVE_KINDS.iter().position(|kind| name.contains(kind))? {
        0 | 1 => Some(Unpacker::Tar),
        _ => Some(Unpacker::Zip),
    }
}

/// The archive kind sandrun would take a file named `name` for where its name does not end as
/// one: it unpacks any file whose name holds `.tar.gz` or `.tgz` (as `upload.tar.gz`), or else
/// `.zip`, anywhere, so `results.zip.txt` would never arrive under its name, and `x.tgz.zip`
/// would be untarred. A name that ends as the kind sandrun takes it for is an archive.
pub fn hidden_archive(name: &str) -> Option<&'static str> {
    let taken_as = match unpacker(name)? {
        Unpacker::Tar => &ARCHIVE_KINDS[..2],
        Unpacker::Zip => &ARCHIVE_KINDS[2..],
    };
    match taken_as.iter().any(|end| name.ends_with(end)) {
        true => None,
        false => ARCHIVE_KINDS.into_iter().find(|kind| name.contains(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_tar_is_named_by_its_path_line() {
        assert_eq!(fake_tar_name(b"print(1)\n"), FakeTar::No);
        assert_eq!(fake_tar_name(b"----Tar\nPat"), FakeTar::No);
        assert_eq!(
            fake_tar_name(b"----Tar\nPath: main.py\nSize: 3\n\nhi\n"),
            FakeTar::Named("main.py")
        );
        assert_eq!(
            fake_tar_name(b"----Tar\nPath: ../../etc/x\n\n"),
            FakeTar::Named("../../etc/x")
        );
        assert_eq!(fake_tar_name(b"----Tar\nPath: \n\n"), FakeTar::Named(""));
        assert_eq!(
            fake_tar_name(b"----Tar\nPath:main.py\n\n"),
            FakeTar::Unreadable("main.py".to_string())
        );
        assert_eq!(
            fake_tar_name(b"----Tar\nPath: main.py"),
            FakeTar::Unreadable(" main.py".to_string())
        );
    }

    #[test]
    fn a_fake_tars_content_follows_its_first_blank_line() {
        assert_eq!(fake_tar_content(b"----Tar\nPath: a\n\nx\n\ny"), b"x\n\ny");
        assert_eq!(fake_tar_content(b"----Tar\nPath: a"), b"---Tar\nPath: a");
    }

    #[test]
    fn archive_extensions_inside_a_name_are_found() {
        assert_eq!(unpacker("main.py"), None);
        assert_eq!(unpacker("x.zip.tgz"), Some(Unpacker::Tar));
        assert_eq!(unpacker("job.zip"), Some(Unpacker::Zip));
        assert_eq!(hidden_archive("main.py"), None);
        assert_eq!(hidden_archive("job.tar.gz"), None);
        assert_eq!(hidden_archive("job.tgz"), None);
        assert_eq!(hidden_archive("job.zip"), None);
        assert_eq!(hidden_archive("results.zip.txt"), Some(".zip"));
        assert_eq!(hidden_archive("x.tgz.zip"), Some(".tgz"));
        assert_eq!(hidden_archive("x.zip.tar.gz"), None);
        assert_eq!(hidden_archive("a.tar.gz.sig"), Some(".tar.gz"));
    }
}
