//! Reads a tar stream's entries as its bytes are handed in (a gunzip [`Sink`]), without
//! keeping them: each entry's name and kind, GNU long names and pax `path` records applied, and
//! the content of the one entry asked for. What GNU `tar -x` would do with an entry is the
//! caller's to judge. Where GNU tar could read the stream otherwise than this reader (a
//! number written in an odd way, a folder entry with content, a run of extended headers, data
//! after a lone zero block, volume and sparse entries), the stream is refused, not guessed at.

use crate::base::gunzip::Sink;

/// A tar block.
const BLOCK: usize = 512;

/// The most bytes kept of a long name or a pax header.
const MAX_META_BYTES: u64 = 1024 * 1024;

/// What an entry is, as GNU tar extracts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (also a type tar does not know: GNU tar extracts those as files).
    File,
    /// A directory.
    Directory,
    /// A hard link to another path.
    HardLink,
    /// A symbolic link.
    Symlink,
    /// A character or block device.
    Device,
    /// A named pipe.
    Fifo,
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path, as stored (a pax `path`, else a GNU long name, else the header's).
    pub path: String,
    /// The other paths its headers gave it (tar takes one of them; each is checked).
    pub also: Vec<String>,
    /// What it is.
    pub kind: EntryKind,
    /// Its size in bytes.
    pub size: u64,
}

/// Why the stream is not a tar archive that can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarFault {
    /// A header whose checksum does not match (at this byte offset of the unpacked stream).
    BadHeader(u64),
    /// The stream ended inside an entry or a header.
    Truncated,
    /// Something this reader does not follow, which could make tar read the stream otherwise
    /// (what).
    Unsupported(&'static str),
    /// A file (its path) whose mode sets the setuid or setgid bit.
    SetId(String),
}

/// What is being read.
enum State {
    /// A header block, gathered in `block`.
    Header,
    /// An entry's content: `left` bytes, then `pad` bytes to the next block.
    Content { left: u64, pad: u64, keep: Keep },
    /// Two zero blocks came (tar's end of archive): the rest is ignored, as tar ignores it.
    Ended,
    /// A fault was found: the rest is ignored.
    Failed,
}

/// What an entry's content is kept for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing.
    Nothing,
    /// A GNU long name for the next entry.
    LongName,
    /// A pax extended header for the next entry.
    Pax,
    /// A pax global header.
    Global,
    /// The entry asked for, of this size.
    Wanted(u64),
}

/// A tar stream being read. Hand the unpacked bytes in; read [`TarScan::entries`] as they come
/// and [`TarScan::finish`] at the end.
pub struct TarScan {
    state: State,
    block: Vec<u8>,
    kept: Vec<u8>,
    next_paths: Vec<String>,
    next_size: Option<u64>,
    offset: u64,
    consumed: u64,
    zero_seen: bool,
    fault: Option<TarFault>,
    wanted: fn(&str) -> bool,
    wanted_max: u64,
    /// The entries read so far, in order (taken by the caller as it goes).
    pub entries: Vec<Entry>,
    /// The content of the last entry `wanted` chose (`Err(size)` when larger than asked).
    pub wanted_content: Option<Result<Vec<u8>, u64>>,
    /// How many entries `wanted` chose.
    pub wanted_seen: u64,
}

impl TarScan {
    /// A scan that keeps, of the regular files whose path `wanted` chooses, the content of the
    /// last one, up to `wanted_max` bytes.
    pub fn new(wanted: fn(&str) -> bool, wanted_max: u64) -> Self {
        TarScan {
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            kept: Vec::new(),
            next_paths: Vec::new(),
            next_size: None,
            offset: 0,
            consumed: 0,
            zero_seen: false,
            fault: None,
            wanted,
            wanted_max,
            entries: Vec::new(),
            wanted_content: None,
            wanted_seen: 0,
        }
    }

    /// Bytes of the unpacked stream read so far.
    pub fn unpacked(&self) -> u64 {
        self.offset
    }

    /// The archive's end: a fault when it could not be read whole.
    pub fn finish(&self) -> Result<(), TarFault> {
        if let Some(fault) = &self.fault {
            return Err(fault.clone());
        }
        match self.state {
            State::Header if self.block.is_empty() => Ok(()),
            State::Ended => Ok(()),
            _ => Err(TarFault::Truncated),
        }
    }

    fn fail(&mut self, fault: TarFault) {
        self.fault = Some(fault);
        self.state = State::Failed;
    }

    /// Reads bytes of the unpacked stream.
    fn consume(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Ended | State::Failed => return,
                State::Header => {
                    let n = (BLOCK - self.block.len()).min(data.len());
                    self.block.extend_from_slice(&data[..n]);
                    self.consumed += n as u64;
                    data = &data[n..];
                    if self.block.len() == BLOCK {
                        self.header();
                        self.block.clear();
                    }
                }
                State::Content { left, pad, keep } => {
                    let keep = *keep;
                    let (n, piece) = if *left > 0 {
                        let n = (*left).min(data.len() as u64) as usize;
                        *left -= n as u64;
                        (n, Some(&data[..n]))
                    } else {
                        let n = (*pad).min(data.len() as u64) as usize;
                        *pad -= n as u64;
                        (n, None)
                    };
                    let done = *left == 0 && *pad == 0;
                    self.consumed += n as u64;
                    data = &data[n..];
                    if let Some(piece) = piece {
                        self.keep(keep, piece);
                    }
                    if done {
                        self.state = State::Header;
                        self.content_done(keep);
                    }
                }
            }
        }
    }

    /// Keeps a piece of content, as `keep` says.
    fn keep(&mut self, keep: Keep, piece: &[u8]) {
        if keep == Keep::Nothing {
            return;
        }
        let room = match keep {
            Keep::Wanted(_) => self.wanted_max,
            _ => MAX_META_BYTES,
        };
        let fits = (room + 1).saturating_sub(self.kept.len() as u64) as usize;
        self.kept.extend_from_slice(&piece[..piece.len().min(fits)]);
    }

    /// An entry's content and padding were read: what was kept takes effect.
    fn content_done(&mut self, keep: Keep) {
        let kept = std::mem::take(&mut self.kept);
        match keep {
            Keep::Nothing => {}
            Keep::LongName => {
                let name = kept.split(|&b| b == 0).next().unwrap_or_default();
                self.next_paths
                    .push(String::from_utf8_lossy(name).into_owned());
            }
            Keep::Pax | Keep::Global => match Pax::read(&kept) {
                None => self.fail(TarFault::Unsupported(
                    "a pax header that does not read as one",
                )),
                Some(pax) if pax.sparse => self.fail(TarFault::Unsupported("a sparse file")),
                Some(pax) if keep == Keep::Global && (pax.path.is_some() || pax.size.is_some()) => {
                    self.fail(TarFault::Unsupported(
                        "a pax global header that sets a path or a size",
                    ))
                }
                Some(pax) => {
                    // The pax path is the one tar takes: first.
                    if let Some(path) = pax.path {
                        self.next_paths.insert(0, path);
                    }
                    if pax.size.is_some() {
                        self.next_size = pax.size;
                    }
                }
            },
            Keep::Wanted(size) => {
                self.wanted_content = Some(match size > self.wanted_max {
                    true => Err(size),
                    false => Ok(kept),
                });
            }
        }
    }

    /// A header block was gathered in `block`.
    fn header(&mut self) {
        let at = self.consumed.saturating_sub(BLOCK as u64);
        let block = std::mem::take(&mut self.block);
        // Two zero blocks end the archive. After a lone one GNU tar stops (and `tar -i` reads
        // on): anything but a second zero block there is refused.
        let zero = block.iter().all(|&b| b == 0);
        match (zero, self.zero_seen) {
            (true, true) => {
                self.state = State::Ended;
                return;
            }
            (true, false) => {
                self.zero_seen = true;
                return;
            }
            (false, true) => {
                self.fail(TarFault::Unsupported("data after a lone zero block"));
                return;
            }
            (false, false) => {}
        }
        if !checksum_matches(&block) {
            self.fail(TarFault::BadHeader(at));
            return;
        }
        let Some(size) = size_field(&block[124..136]) else {
            self.fail(TarFault::BadHeader(at));
            return;
        };
        let typeflag = block[156];
        let stored = stored_path(&block);
        if matches!(typeflag, b'L' | b'x' | b'X' | b'g') && size > MAX_META_BYTES {
            self.fail(TarFault::Unsupported("an extended header over 1 MiB"));
            return;
        }
        let meta_pending = !self.next_paths.is_empty() || self.next_size.is_some();
        if meta_pending && matches!(typeflag, b'L' | b'K' | b'x' | b'X' | b'g') {
            self.fail(TarFault::Unsupported("a run of extended headers"));
            return;
        }
        // An extended header's content is its own; an entry's is what a pax size says, else
        // its header's.
        let mut content_size = size;
        let keep = match typeflag {
            b'L' => Keep::LongName,
            b'x' | b'X' => Keep::Pax,
            b'g' => Keep::Global,
            b'K' => Keep::Nothing,
            b'S' => {
                self.fail(TarFault::Unsupported("a sparse file"));
                return;
            }
            b'V' | b'M' | b'N' => {
                self.fail(TarFault::Unsupported("a volume or multi-volume entry"));
                return;
            }
            b'D' => {
                self.fail(TarFault::Unsupported("an incremental dump's folder entry"));
                return;
            }
            _ => {
                content_size = self.next_size.take().unwrap_or(size);
                let mut paths = std::mem::take(&mut self.next_paths);
                paths.push(stored);
                let path = paths.remove(0);
                let kind = match typeflag {
                    b'1' => EntryKind::HardLink,
                    b'2' => EntryKind::Symlink,
                    b'3' | b'4' => EntryKind::Device,
                    b'5' => EntryKind::Directory,
                    b'6' => EntryKind::Fifo,
                    b'0' | 0 | b'7' if path.ends_with('/') => EntryKind::Directory,
                    _ => EntryKind::File,
                };
                // Another kind with a trailing slash: tar writes a file of the name without it.
                if kind == EntryKind::File && path.ends_with('/') {
                    self.fail(TarFault::Unsupported("a file entry whose name ends in /"));
                    return;
                }
                // GNU tar, run as root, writes a file's setuid and setgid bits (and takes a
                // mode it cannot read as -1: every bit set); a setuid-root file in the job's
                // directory on the worker's host is a way to root for whoever reaches it.
                if kind == EntryKind::File {
                    match size_field(&block[100..108]) {
                        Some(mode) if mode & 0o6000 == 0 => {}
                        Some(_) => {
                            self.fail(TarFault::SetId(path));
                            return;
                        }
                        None => {
                            self.fail(TarFault::Unsupported(
                                "a file whose mode does not read as a number",
                            ));
                            return;
                        }
                    }
                }
                // GNU tar reads no content after a folder entry, whatever its size says.
                if kind == EntryKind::Directory && content_size != 0 {
                    self.fail(TarFault::Unsupported("a folder entry that claims content"));
                    return;
                }
                // Only the name tar writes the entry under makes it the one wanted.
                let wanted = kind == EntryKind::File && (self.wanted)(&path);
                self.wanted_seen += u64::from(wanted);
                self.entries.push(Entry {
                    path,
                    also: paths,
                    kind,
                    size: content_size,
                });
                match wanted {
                    true => Keep::Wanted(content_size),
                    false => Keep::Nothing,
                }
            }
        };
        let pad = (BLOCK as u64 - content_size % BLOCK as u64) % BLOCK as u64;
        self.state = State::Content {
            left: content_size,
            pad,
            keep,
        };
        if content_size == 0 {
            self.state = State::Header;
            self.content_done(keep);
        }
    }
}

impl Sink for TarScan {
    fn take(&mut self, data: &[u8]) {
        self.offset += data.len() as u64;
        self.consume(data);
    }

    /// tar reads nothing after the archive's end, and a fault ends the reading.
    fn satisfied(&self) -> bool {
        matches!(self.state, State::Ended | State::Failed)
    }
}

/// Whether a header's checksum (the sum of its bytes, the checksum field counted as spaces)
/// matches the one it stores, as signed or unsigned bytes.
fn checksum_matches(block: &[u8]) -> bool {
    let Some(stored) = octal(&block[148..156]) else {
        return false;
    };
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// The size field: octal (see [`octal`]), or GNU's base-256 for a large one (a first byte of
/// exactly 0x80; a negative one is no size).
fn size_field(field: &[u8]) -> Option<u64> {
    if field.first() == Some(&0x80) {
        let mut value = 0u64;
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    octal(field)
}

/// An octal header field written plainly: spaces, at least one octal digit, then only NULs and
/// spaces. Others (a leading NUL, digits split by a NUL) GNU tar may read otherwise.
fn octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|&b| b != b' ')?;
    let digits = field[start..]
        .iter()
        .take_while(|&&b| (b'0'..=b'7').contains(&b))
        .count();
    let rest = &field[start + digits..];
    if digits == 0 || rest.iter().any(|&b| b != 0 && b != b' ') {
        return None;
    }
    let text = std::str::from_utf8(&field[start..start + digits]).ok()?;
    u64::from_str_radix(text, 8).ok()
}

/// A NUL-terminated header field as text.
fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The path a header stores: its name, after the ustar prefix when there is one.
fn stored_path(block: &[u8]) -> String {
    let name = text(&block[..100]);
    // POSIX ustar only: GNU's own magic (`ustar  `) holds other fields where the prefix is.
    let ustar = &block[257..263] == b"ustar\0";
    let prefix = if ustar {
        text(&block[345..500])
    } else {
        String::new()
    };
    match prefix.is_empty() {
        true => name,
        false => format!("{prefix}/{name}"),
    }
}

/// What a pax header's records (`<length> <key>=<value>\n`) say that matters here.
#[derive(Default)]
struct Pax {
    path: Option<String>,
    size: Option<u64>,
    sparse: bool,
}

impl Pax {
    /// Reads the records; `None` when one does not read as GNU tar reads a record (it stops at
    /// such a record, so what follows would count here and not there): a length of ASCII
    /// digits, a space, `key=value` and a newline, the length counting all of it.
    fn read(records: &[u8]) -> Option<Pax> {
        let digits = |text: &[u8]| {
            (!text.is_empty() && text.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(text).ok()?.parse::<u64>().ok())
                .flatten()
        };
        let mut rest = records;
        let mut pax = Pax::default();
        while !rest.is_empty() {
            let space = rest.iter().position(|&b| b == b' ')?;
            let len = usize::try_from(digits(&rest[..space])?).ok()?;
            let record = rest.get(space + 1..len)?.strip_suffix(b"\n")?;
            let equals = record
                .iter()
                .position(|&b| b == b'=')
                .filter(|&at| at > 0)?;
            let (key, value) = (&record[..equals], &record[equals + 1..]);
            // tar skips blanks before a key and stops at a NUL in it: a key of anything but
            // printable ASCII is refused.
            if !key.iter().all(|&b| b.is_ascii_graphic()) {
                return None;
            }
            match key {
                b"path" => {
                    // tar takes the name up to a NUL.
                    let value = value.split(|&b| b == 0).next().unwrap_or_default();
                    pax.path = Some(String::from_utf8_lossy(value).into_owned());
                }
                b"size" => pax.size = Some(digits(value)?),
                _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
                _ => {}
            }
            rest = &rest[len..];
        }
        Some(pax)
    }
}

/// Tar archives built byte by byte, for the unit tests of this reader and of its callers.
#[cfg(test)]
pub(crate) mod test_archive {
    use super::BLOCK;

    /// A ustar header for `name` (its first 100 bytes) of `typeflag` and `size`, its checksum
    /// set.
    pub(crate) fn header(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK];
        let stored = &name.as_bytes()[..name.len().min(100)];
        block[..stored.len()].copy_from_slice(stored);
        block[100..108].copy_from_slice(b"0000644\0");
        block[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        block
    }

    /// An entry: its header, then `content` padded to whole blocks.
    pub(crate) fn entry(name: &str, typeflag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, content.len() as u64);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_archive::{entry, header};
    use super::*;

    fn scan(archive: &[u8], piece: usize) -> TarScan {
        let mut scan = TarScan::new(|p| p == "job.json", 64);
        for chunk in archive.chunks(piece) {
            Sink::take(&mut scan, chunk);
        }
        scan
    }

    #[test]
    fn entries_kinds_long_names_and_the_wanted_content_are_read_in_any_pieces() {
        let mut archive = entry("main.py", b'0', b"print(1)\n");
        archive.extend(entry("job.json", b'0', br#"{"entrypoint":"main.py"}"#));
        archive.extend(entry("d", b'5', b""));
        archive.extend(entry("ln", b'2', b""));
        let long = "x/".repeat(80) + "deep.txt";
        archive.extend(entry("././@LongLink", b'L', format!("{long}\0").as_bytes()));
        archive.extend(entry("short", b'0', b"abc"));
        archive.extend(entry("pax", b'x', b"20 path=pax/named.t\n"));
        archive.extend(entry("p", b'6', b""));
        archive.extend(vec![0u8; 2 * BLOCK]);
        for piece in [1, 7, 512, 100_000] {
            let scan = scan(&archive, piece);
            assert_eq!(scan.finish(), Ok(()), "pieces of {piece}");
            let seen: Vec<(&str, EntryKind)> = scan
                .entries
                .iter()
                .map(|e| (e.path.as_str(), e.kind))
                .collect();
            assert_eq!(
                seen,
                [
                    ("main.py", EntryKind::File),
                    ("job.json", EntryKind::File),
                    ("d", EntryKind::Directory),
                    ("ln", EntryKind::Symlink),
                    (long.as_str(), EntryKind::File),
                    ("pax/named.t", EntryKind::Fifo),
                ],
                "pieces of {piece}"
            );
            assert_eq!(
                scan.wanted_content,
                Some(Ok(br#"{"entrypoint":"main.py"}"#.to_vec()))
            );
        }
    }

    #[test]
    fn a_setuid_or_setgid_file_and_a_mode_tar_reads_as_all_bits_are_refused() {
        let with_mode = |mode: &[u8; 8], typeflag: u8| {
            let content: &[u8] = if typeflag == b'5' { b"" } else { b"x" };
            let mut archive = entry("tool", typeflag, content);
            archive[100..108].copy_from_slice(mode);
            archive[148..156].copy_from_slice(b"        ");
            let sum: u64 = archive[..BLOCK].iter().map(|&b| u64::from(b)).sum();
            archive[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            archive.extend(vec![0u8; 2 * BLOCK]);
            scan(&archive, 100).finish()
        };
        let setid = Err(TarFault::SetId("tool".into()));
        assert_eq!(with_mode(b"0004755\0", b'0'), setid);
        assert_eq!(with_mode(b"0002755\0", b'0'), setid);
        assert_eq!(with_mode(b"\x80\0\0\0\0\0\x0d\xed", b'0'), setid);
        let unread = Err(TarFault::Unsupported(
            "a file whose mode does not read as a number",
        ));
        assert_eq!(with_mode(&[0; 8], b'0'), unread);
        assert_eq!(with_mode(b"\xff\xff\xff\xff\xff\xff\xff\xff", b'0'), unread);
        // A sticky bit, plain modes and a setgid folder (a shared group's) are taken.
        assert_eq!(with_mode(b"0001755\0", b'0'), Ok(()));
        assert_eq!(with_mode(b" 000755 ", b'0'), Ok(()));
        assert_eq!(with_mode(b"0002775\0", b'5'), Ok(()));
    }

    #[test]
    fn a_bad_checksum_a_cut_stream_and_a_large_wanted_file_are_told() {
        let mut archive = entry("main.py", b'0', b"print(1)\n");
        archive[0] = b'n';
        assert_eq!(scan(&archive, 512).finish(), Err(TarFault::BadHeader(0)));
        let archive = entry("main.py", b'0', b"print(1)\n");
        assert_eq!(
            scan(&archive[..600], 512).finish(),
            Err(TarFault::Truncated)
        );
        let archive = entry("job.json", b'0', &[b' '; 100]);
        assert_eq!(scan(&archive, 512).wanted_content, Some(Err(100)));
        assert_eq!(scan(b"", 1).finish(), Ok(()));
    }

    #[test]
    fn what_tar_could_read_otherwise_is_refused_and_junk_after_the_end_ignored() {
        let file = entry("main.py", b'0', b"print(1)\n");
        let refused = |tail: Vec<u8>| {
            let mut archive = file.clone();
            archive.extend(tail);
            archive.extend(vec![0u8; 2 * BLOCK]);
            scan(&archive, 100).finish()
        };
        let mut lone = vec![0u8; BLOCK];
        lone.extend(entry("ln", b'2', b""));
        let mut run = entry("p1", b'x', b"12 size=512\n");
        run.extend(entry("p2", b'x', b"16 path=carrier\n"));
        let cases = [
            (lone, "data after a lone zero block"),
            (
                header("d/", b'5', 512),
                "a folder entry that claims content",
            ),
            (
                header("d/", b'0', 512),
                "a folder entry that claims content",
            ),
            (run, "a run of extended headers"),
            (header("m", b'M', 0), "a volume or multi-volume entry"),
        ];
        for (tail, why) in cases {
            assert_eq!(refused(tail), Err(TarFault::Unsupported(why)), "{why}");
        }
        let mut split = header("carrier", b'0', 0);
        split[124..136].copy_from_slice(b"\x00\x000000001000");
        assert_eq!(refused(split), Err(TarFault::BadHeader(BLOCK as u64 * 2)));
        let mut end = file.clone();
        end.extend(vec![0u8; 2 * BLOCK]);
        end.extend(vec![7u8; BLOCK]);
        assert_eq!(scan(&end, 100).finish(), Ok(()));
        // A Solaris pax header ('X') is read as one.
        let mut solaris = entry("px", b'X', b"17 path=job.json\n");
        solaris.extend(entry("innocent", b'0', b"{}"));
        solaris.extend(vec![0u8; 2 * BLOCK]);
        let scan = scan(&solaris, 512);
        assert_eq!(scan.entries[0].path, "job.json");
        assert_eq!(scan.wanted_content, Some(Ok(b"{}".to_vec())));
    }

    #[test]
    fn a_pax_size_stands_for_the_headers_and_sparse_files_are_refused() {
        // The header says 0 bytes, the pax record 512: tar reads the next block as content.
        let mut archive = entry("pax", b'x', b"12 size=512\n");
        archive.extend(header("main.py", b'0', 0));
        archive.extend(header("hidden", b'2', 0));
        archive.extend(header("seen", b'2', 0));
        archive.extend(vec![0u8; 2 * BLOCK]);
        let scan = scan(&archive, 512);
        assert_eq!(scan.finish(), Ok(()));
        let paths: Vec<&str> = scan.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["main.py", "seen"]);
        let sparse = entry("s", b'S', b"");
        assert_eq!(
            super::tests::scan(&sparse, 512).finish(),
            Err(TarFault::Unsupported("a sparse file"))
        );
        let mut gnu_sparse = entry("pax", b'x', b"28 GNU.sparse.name=job.json\n");
        gnu_sparse.extend(entry("GNUSparseFile.0/x", b'0', b""));
        assert_eq!(
            super::tests::scan(&gnu_sparse, 512).finish(),
            Err(TarFault::Unsupported("a sparse file"))
        );
    }

    #[test]
    fn pax_records_gnu_tar_would_stop_at_are_refused() {
        for records in [
            &b"13 size=+512\n"[..],
            b"11  size=0\n",
            b"12 \tsize=0\n",
            b"7 a\0=b\n",
            b"+11 path=f\n",
            b"7 a=bX9 path=f\n",
            b"6 abc\n",
            b"12 size=5 1\n",
        ] {
            let mut archive = entry("px", b'x', records);
            archive.extend(header("f", b'0', 0));
            archive.extend(vec![0u8; 2 * BLOCK]);
            assert_eq!(
                scan(&archive, 512).finish(),
                Err(TarFault::Unsupported(
                    "a pax header that does not read as one"
                )),
                "{}",
                String::from_utf8_lossy(records)
            );
        }
    }

    #[test]
    fn a_large_wanted_file_is_told_so_when_the_entries_were_taken_meanwhile() {
        let archive = entry("job.json", b'0', &[b' '; 100]);
        let mut scan = TarScan::new(|p| p == "job.json", 64);
        for chunk in archive.chunks(1) {
            Sink::take(&mut scan, chunk);
            scan.entries.clear();
        }
        assert_eq!(scan.wanted_content, Some(Err(100)));
    }

    #[test]
    fn numbers_are_octal_or_base_256() {
        assert_eq!(size_field(b"00000000012\0"), Some(10));
        assert_eq!(size_field(b"   12 \0"), Some(10));
        assert_eq!(
            size_field(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(size_field(&[0xff; 12]), None);
        assert_eq!(size_field(b"9"), None);
        assert_eq!(size_field(b"\x00\x000000001000"), None);
        assert_eq!(size_field(b"0001\x00001"), None);
        assert_eq!(size_field(b"\0\0\0"), None);
    }
}
