//! Reads a zip archive's entries from its central directory, at its end: each entry's name,
//! whether it is a symbolic link (a Unix mode stored by the zip tool that made it) and its
//! unpacked size. Only the archive's last bytes are needed: [`Tail`] keeps them as the archive
//! streams by.

/// How a zip's end of central directory record begins.
const END_SIGNATURE: &[u8] = b"PK\x05\x06";
/// How a zip64 end of central directory locator begins.
const LOCATOR_SIGNATURE: &[u8] = b"PK\x06\x07";
/// How a zip64 end of central directory record begins.
const END64_SIGNATURE: &[u8] = b"PK\x06\x06";
/// How a central directory entry begins.
const ENTRY_SIGNATURE: &[u8] = b"PK\x01\x02";
/// The end record's size without its comment.
const END_SIZE: usize = 22;
/// The longest comment an end record may carry.
const MAX_COMMENT: usize = 0xffff;

/// The last bytes of a stream, at most `keep` of them (kept in at most twice that memory).
pub struct Tail {
    keep: usize,
    bytes: Vec<u8>,
    /// Bytes seen in all.
    pub total: u64,
}

impl Tail {
    /// Keeps the last `keep` bytes.
    pub fn new(keep: usize) -> Self {
        Tail {
            keep,
            bytes: Vec::new(),
            total: 0,
        }
    }

    /// Takes the next bytes of the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.keep)..];
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > 2 * self.keep {
            let cut = self.bytes.len() - self.keep;
            self.bytes.drain(..cut);
        }
    }

    /// The bytes kept: the stream's last ones.
    pub fn bytes(&self) -> &[u8] {
        let start = self.bytes.len().saturating_sub(self.keep);
        &self.bytes[start..]
    }
}

/// One entry of the central directory. A link is told by the Unix mode in the high half of
/// its external attributes, whatever system the zip says made it (unzip reads it so for the
/// Unix-like ones; others leave that half 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Its name, as stored.
    pub name: String,
    /// The other names unzip may write it under: the stored name without the bytes unzip
    /// drops (control bytes, 0x7f, 0xff) and a VMS version (`;1`) at its end, and a Unicode
    /// Path extra field's name.
    pub also: Vec<String>,
    /// A symbolic link (a Unix mode of type link).
    pub symlink: bool,
    /// It carries an extra field from which unzip may take a Unix mode (ASi Unix, PKWARE
    /// Unix), so it may be unpacked as a link too.
    pub unix_extra: bool,
    /// Its name has bytes from 0x80 up, not marked UTF-8, from a system whose names unzip
    /// maps from a DOS code page (FAT, HPFS, NTFS, VFAT): it may write another name.
    pub oem_name: bool,
    /// Its unpacked size, as the directory says.
    pub size: u64,
}

/// Why a zip's entries could not be read from its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZipFault {
    /// No end of central directory record: not a zip archive.
    NotZip,
    /// The central directory (this many bytes) is larger than the end kept.
    LargeDirectory(u64),
    /// The central directory does not read as one, or not where the end record says, or holds
    /// other entries than it counts (unzip reads on while entries follow).
    BadDirectory,
}

/// Reads a little-endian number of `N` bytes at `at`.
fn le<const N: usize>(bytes: &[u8], at: usize) -> Option<u64> {
    let field = bytes.get(at..at + N)?;
    Some(
        field
            .iter()
            .rev()
            .fold(0u64, |value, &b| (value << 8) | u64::from(b)),
    )
}

/// The entries of the zip archive of `total` bytes whose last bytes are `tail`. The central
/// directory must lie where the end record says and hold just the entries it counts: a zip
/// with bytes before it (a self-extracting one) is refused.
pub fn entries(tail: &[u8], total: u64) -> Result<Vec<ZipEntry>, ZipFault> {
    let search_from = tail.len().saturating_sub(END_SIZE + MAX_COMMENT);
    let end = (search_from..=tail.len().saturating_sub(END_SIZE))
        .rev()
        .find(|&at| tail[at..].starts_with(END_SIGNATURE))
        .ok_or(ZipFault::NotZip)?;
    let mut count = le::<2>(tail, end + 10).ok_or(ZipFault::NotZip)?;
    let mut size = le::<4>(tail, end + 12).ok_or(ZipFault::NotZip)?;
    let mut offset = le::<4>(tail, end + 16).ok_or(ZipFault::NotZip)?;
    let mut directory_end = end;
    let tail_start = total.saturating_sub(tail.len() as u64);
    let locator = end
        .checked_sub(20)
        .filter(|&at| tail[at..].starts_with(LOCATOR_SIGNATURE));
    if count == 0xffff || size == 0xffff_ffff || offset == 0xffff_ffff || locator.is_some() {
        // zip64: the locator just before the end record points to the zip64 end record.
        // unzip takes a zip64 value only where the 32-bit one is saturated: each 32-bit value
        // must be that, or the same as the zip64 one.
        let locator = locator.ok_or(ZipFault::BadDirectory)?;
        let record = le::<8>(tail, locator + 8)
            .and_then(|at| at.checked_sub(tail_start))
            .and_then(|at| usize::try_from(at).ok())
            .filter(|&at| at + 56 <= locator && tail[at..].starts_with(END64_SIGNATURE))
            .ok_or(ZipFault::BadDirectory)?;
        let wide = |at: usize, narrow: u64, saturated: u64| {
            let value = le::<8>(tail, record + at)?;
            (narrow == saturated || narrow == value).then_some(value)
        };
        count = wide(32, count, 0xffff).ok_or(ZipFault::BadDirectory)?;
        size = wide(40, size, 0xffff_ffff).ok_or(ZipFault::BadDirectory)?;
        offset = wide(48, offset, 0xffff_ffff).ok_or(ZipFault::BadDirectory)?;
        directory_end = record;
    }
    let start = usize::try_from(size)
        .ok()
        .and_then(|size| directory_end.checked_sub(size))
        .ok_or(ZipFault::LargeDirectory(size))?;
    if offset.checked_add(size) != Some(tail_start + directory_end as u64) {
        return Err(ZipFault::BadDirectory);
    }
    let directory = &tail[start..directory_end];
    let mut found = Vec::new();
    let mut at = 0;
    while found.len() as u64 != count {
        found.push(entry(directory, &mut at).ok_or(ZipFault::BadDirectory)?);
    }
    if at != directory.len() {
        return Err(ZipFault::BadDirectory);
    }
    Ok(found)
}

/// Reads the central directory entry at `*at`, moving past it.
fn entry(directory: &[u8], at: &mut usize) -> Option<ZipEntry> {
    let e = *at;
    if !directory.get(e..)?.starts_with(ENTRY_SIGNATURE) {
        return None;
    }
    let host = le::<2>(directory, e + 4)? >> 8;
    let utf8 = le::<2>(directory, e + 8)? & 0x800 != 0;
    let mut size = le::<4>(directory, e + 24)?;
    let name_len = le::<2>(directory, e + 28)? as usize;
    let extra_len = le::<2>(directory, e + 30)? as usize;
    let comment_len = le::<2>(directory, e + 32)? as usize;
    let external = le::<4>(directory, e + 38)?;
    let name = directory.get(e + 46..e + 46 + name_len)?;
    let extra = directory.get(e + 46 + name_len..e + 46 + name_len + extra_len)?;
    if size == 0xffff_ffff {
        size = zip64_size(extra)?;
    }
    let unix_extra = extra_fields(extra).any(|(id, _)| id == 0x756e || id == 0x000d);
    let unicode = extra_fields(extra)
        .find(|&(id, _)| id == 0x7075)
        .and_then(|(_, data)| data.get(5..));
    let also = [Some(name), unicode]
        .into_iter()
        .flatten()
        .flat_map(|n| [n.to_vec(), as_unzip_writes(n)])
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    let oem_name = matches!(host, 0 | 6 | 11 | 14) && !utf8 && name.iter().any(|&b| b >= 0x80);
    *at = e + 46 + name_len + extra_len + comment_len;
    Some(ZipEntry {
        name: String::from_utf8_lossy(name).into_owned(),
        also,
        oem_name,
        symlink: (external >> 16) & 0o170000 == 0o120000,
        unix_extra,
        size,
    })
}

/// An entry's extra fields: (id, data).
fn extra_fields(mut extra: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    std::iter::from_fn(move || {
        let id = le::<2>(extra, 0)?;
        let len = le::<2>(extra, 2)? as usize;
        let data = extra.get(4..4 + len).unwrap_or_default();
        extra = extra.get(4 + len..).unwrap_or_default();
        Some((id, data))
    })
}

/// A name as unzip writes it: without control bytes, 0x7f and 0xff, and without a VMS version
/// (`;` and digits) at its end.
fn as_unzip_writes(name: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = name
        .iter()
        .copied()
        .filter(|&b| b >= 0x20 && b != 0x7f && b != 0xff)
        .collect();
    if let Some(semi) = out.iter().rposition(|&b| b == b';') {
        if out[semi + 1..].iter().all(u8::is_ascii_digit) {
            out.truncate(semi);
        }
    }
    out
}

/// The unpacked size in a zip64 extra field (its first value).
fn zip64_size(mut extra: &[u8]) -> Option<u64> {
    while extra.len() >= 4 {
        let id = le::<2>(extra, 0)?;
        let len = le::<2>(extra, 2)? as usize;
        if id == 1 {
            return le::<8>(extra, 4);
        }
        extra = extra.get(4 + len..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip of `entries` (name, symlink, content), stored, as a Unix zip tool makes it.
    fn zip(entries: &[(&str, bool, &[u8])]) -> Vec<u8> {
        let entries: Vec<_> = entries
            .iter()
            .map(|&(n, l, c)| (n, l, c, &b""[..]))
            .collect();
        zip_with_extras(&entries)
    }

    /// The same, each entry's central directory record with an extra field of its own.
    fn zip_with_extras(entries: &[(&str, bool, &[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for (name, symlink, content, extra) in entries {
            let offset = out.len() as u32;
            out.extend_from_slice(b"PK\x03\x04\x0a\0\0\0\0\0\0\0\0\0\0\0\0\0");
            out.extend_from_slice(&(content.len() as u32).to_le_bytes());
            out.extend_from_slice(&(content.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(content);
            let mode: u32 = if *symlink { 0o120777 } else { 0o100644 };
            directory.extend_from_slice(b"PK\x01\x02\x1e\x03\x0a\0\0\0\0\0\0\0\0\0\0\0\0\0");
            directory.extend_from_slice(&(content.len() as u32).to_le_bytes());
            directory.extend_from_slice(&(content.len() as u32).to_le_bytes());
            directory.extend_from_slice(&(name.len() as u16).to_le_bytes());
            directory.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            directory.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            directory.extend_from_slice(&(mode << 16).to_le_bytes());
            directory.extend_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(name.as_bytes());
            directory.extend_from_slice(extra);
        }
        let offset = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn entries_links_and_sizes_are_read_from_the_end() {
        let archive = zip(&[("main.py", false, b"print(1)\n"), ("ln", true, b"/etc")]);
        let mut tail = Tail::new(1 << 20);
        for piece in archive.chunks(3) {
            tail.push(piece);
        }
        assert_eq!(tail.total, archive.len() as u64);
        let found = entries(tail.bytes(), tail.total).unwrap_or_default();
        assert_eq!(
            found,
            [
                ZipEntry {
                    name: "main.py".into(),
                    also: vec!["main.py".into(), "main.py".into()],
                    symlink: false,
                    unix_extra: false,
                    oem_name: false,
                    size: 9
                },
                ZipEntry {
                    name: "ln".into(),
                    also: vec!["ln".into(), "ln".into()],
                    symlink: true,
                    unix_extra: false,
                    oem_name: false,
                    size: 4
                },
            ]
        );
    }

    #[test]
    fn a_unicode_path_and_unix_extra_fields_are_seen() {
        let unicode = [&[0x75, 0x70, 13, 0, 1, 0, 0, 0, 0][..], b"job.json"].concat();
        let asi = [0x6e, 0x75, 2, 0, 0, 0];
        let archive = zip_with_extras(&[
            ("safe.txt", false, b"{}", &unicode),
            ("ln", false, b"x", &asi),
        ]);
        let found = entries(&archive, archive.len() as u64).unwrap_or_default();
        assert!(found[0].also.contains(&"job.json".to_string()), "{found:?}");
        assert!(!found[0].unix_extra && found[1].unix_extra, "{found:?}");
    }

    #[test]
    fn names_are_read_as_unzip_writes_them() {
        assert_eq!(as_unzip_writes(b"job\x01.json;1"), b"job.json");
        assert_eq!(as_unzip_writes(b"job.js\xffon;"), b"job.json");
        assert_eq!(as_unzip_writes(b"a;b.txt"), b"a;b.txt");
    }

    #[test]
    fn a_directory_past_the_tail_or_no_zip_at_all_is_told() {
        let archive = zip(&[("a", false, b"x"), ("b", false, b"y")]);
        let mut tail = Tail::new(40);
        tail.push(&archive);
        assert_eq!(tail.bytes().len(), 40);
        assert!(matches!(
            entries(tail.bytes(), tail.total),
            Err(ZipFault::LargeDirectory(_) | ZipFault::NotZip)
        ));
        assert_eq!(entries(b"not a zip at all", 16), Err(ZipFault::NotZip));
        assert_eq!(entries(b"", 0), Err(ZipFault::NotZip));
        // Bytes before the archive, or a count below the entries there: refused.
        let mut prefixed = b"#!/bin/sh\n".to_vec();
        prefixed.extend(&archive);
        assert_eq!(
            entries(&prefixed, prefixed.len() as u64),
            Err(ZipFault::BadDirectory)
        );
        let mut undercounted = archive.clone();
        let end = undercounted.len() - END_SIZE;
        undercounted[end + 10] = 1;
        assert_eq!(
            entries(&undercounted, undercounted.len() as u64),
            Err(ZipFault::BadDirectory)
        );
    }
}
