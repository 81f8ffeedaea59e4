//! Reads a zip archive's entries from its central directory, at its end: each entry's name,
//! whether it is a symbolic link (a Unix mode stored by the zip tool that made it) and its
//! unpacked size. Only the archive's last bytes are needed: [`Tail`] keeps them as the archive
//! streams by.

use flate2::{Decompress, FlushDecompress, Status};

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
    /// Its packed (compressed) size, as the directory says.
    pub packed: u64,
    /// Where its local entry begins, as the directory says.
    pub offset: u64,
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
    let mut offset = le::<4>(directory, e + 42)?;
    let mut packed = le::<4>(directory, e + 20)?;
    if [size, packed, offset].contains(&0xffff_ffff) {
        // zip64: the sizes, then the offset, each only where the 32-bit one is saturated.
        let zip64 = extra_fields(extra).find(|&(id, _)| id == 1)?.1;
        let mut at = 0;
        for value in [&mut size, &mut packed, &mut offset] {
            if *value == 0xffff_ffff {
                *value = le::<8>(zip64, at)?;
                at += 8;
            }
        }
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
        packed,
        offset,
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

/// How a zip's local entry begins.
const LOCAL_SIGNATURE: &[u8] = b"PK\x03\x04";
/// How a data descriptor may begin.
const DESCRIPTOR_SIGNATURE: &[u8] = b"PK\x07\x08";
/// A local entry's header without its name and extra field.
const LOCAL_SIZE: usize = 30;
/// The most local entries followed: more than a central directory of [`Tail`]'s 1 MiB lists.
const MAX_LOCAL_ENTRIES: usize = 1024 * 1024 / 46;

/// Where a zip's local entries are read.
enum Flow {
    /// A local header (or the central directory's start), gathered in `carry`.
    Header,
    /// Bytes of a stored entry, or after a deflated entry's data, to skip.
    Skip(u64),
    /// A deflated entry's data: at most `left` more bytes; `descriptor`: the size of the data
    /// descriptor after it (without its signature), when there is one.
    Inflate {
        left: u64,
        descriptor: Option<usize>,
    },
    /// A data descriptor of this size (without its signature), gathered in `carry`.
    Descriptor(usize),
    /// A stored entry's data whose size follows it, searched for its data descriptor.
    Search,
    /// The central directory began, or a fault was found: the rest is not read.
    Done,
}

/// A zip's local entries, read as its bytes stream by: where each begins and the most bytes
/// unzip can write of it. unzip inflates a deflated entry as far as its data goes, whatever
/// size the directory gives it, so that size does not bound what it writes; here the data is
/// inflated and counted. A stored entry whose size follows its data ends where a data
/// descriptor that agrees with the data read so far follows ([`DescriptorSearch`]); unzip
/// takes such an entry's size from the central directory, which must then say the same
/// ([`LocalEntries::sizes_differ`]). What cannot be followed so is refused: an entry
/// encrypted, compressed otherwise than stored or deflated, or stored with its size after its
/// data and no data descriptor that agrees with it.
pub struct LocalEntries {
    flow: Flow,
    carry: Vec<u8>,
    at: u64,
    inflate: Option<Box<Decompress>>,
    search: DescriptorSearch,
    out: Vec<u8>,
    limit: u64,
    /// Each local entry: the offset of its header and the most bytes unzip writes of it.
    pub found: Vec<(u64, u64)>,
    /// The offsets of the stored entries whose size followed their data.
    described: Vec<u64>,
    /// The sum of what `found` says the entries write.
    written: u64,
    /// What could not be followed.
    pub fault: Option<&'static str>,
    /// The entries write more than the limit given (the reading stopped there).
    pub too_large: bool,
}

impl LocalEntries {
    /// A reading at a zip's start, which stops once its entries write more than `limit` bytes.
    pub fn new(limit: u64) -> Self {
        LocalEntries {
            flow: Flow::Header,
            carry: Vec::new(),
            at: 0,
            inflate: None,
            search: DescriptorSearch::new(4),
            out: Vec::new(),
            limit,
            found: Vec::new(),
            described: Vec::new(),
            written: 0,
            fault: None,
            too_large: false,
        }
    }

    /// The zip's end: what could not be followed, if anything (a local entry cut short, too).
    pub fn finish(&self) -> Result<(), &'static str> {
        match (self.fault, &self.flow) {
            (Some(fault), _) => Err(fault),
            (None, Flow::Done) => Ok(()),
            (None, Flow::Search) => Err("a stored entry with no data descriptor after its data"),
            (None, _) => Err("a local entry cut short"),
        }
    }

    /// What unzip writes, at most, of the local entry whose header is at `offset` (`None`: no
    /// local entry begins there).
    pub fn written_at(&self, offset: u64) -> Option<u64> {
        let at = self.found.binary_search_by_key(&offset, |&(o, _)| o).ok()?;
        Some(self.found[at].1)
    }

    /// Whether the central directory's `entry` gives other sizes than the data its local
    /// entry was read to: a stored entry whose size followed its data, read up to its data
    /// descriptor, of which unzip writes as many bytes as the directory's packed size says.
    pub fn sizes_differ(&self, entry: &ZipEntry) -> bool {
        self.described.binary_search(&entry.offset).is_ok()
            && self
                .written_at(entry.offset)
                .is_some_and(|read| read != entry.size || read != entry.packed)
    }

    /// The bytes the entries read so far write, at most.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn fail(&mut self, fault: &'static str) {
        self.fault = Some(fault);
        self.flow = Flow::Done;
    }

    /// Counts `bytes` more written by the last entry; false (the reading stopped) once the
    /// entries write more than the limit.
    fn count(&mut self, bytes: u64) -> bool {
        if let Some(last) = self.found.last_mut() {
            last.1 += bytes;
        }
        self.written = self.written.saturating_add(bytes);
        if self.written > self.limit {
            self.too_large = true;
            self.fail("entries that unpack to more than allowed");
        }
        !self.too_large
    }

    /// Takes the next bytes of a stored entry whose size follows its data; what is left of
    /// `data` after its data descriptor, if it ended.
    fn search<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let search = &mut self.search;
        let before = search.data;
        let end = search.take(data);
        let read = search.data - before;
        let rest = match end {
            Some(end) => {
                self.carry = end.carry;
                self.flow = Flow::Header;
                &data[end.used..]
            }
            None => &[],
        };
        match self.count(read) {
            true => rest,
            false => &[],
        }
    }

    /// Takes the zip's next bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let before = data.len();
            match self.flow {
                Flow::Done => return,
                Flow::Skip(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.flow = match left - n {
                        0 => Flow::Header,
                        left => Flow::Skip(left),
                    };
                }
                Flow::Descriptor(size) => {
                    // Its signature is optional: 4 bytes tell whether it is there.
                    let want = |carry: &[u8]| match carry.len() < 4 {
                        true => 4,
                        false if carry.starts_with(DESCRIPTOR_SIGNATURE) => size + 4,
                        false => size,
                    };
                    let n = (want(&self.carry) - self.carry.len()).min(data.len());
                    self.carry.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.carry.len() >= 4 && self.carry.len() == want(&self.carry) {
                        self.carry.clear();
                        self.flow = Flow::Header;
                    }
                }
                Flow::Search => data = self.search(data),
                Flow::Header => {
                    let n = self.header_room().min(data.len());
                    self.carry.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.at += n as u64;
                    self.header();
                    continue;
                }
                Flow::Inflate { left, descriptor } => {
                    let Some(inflate) = self.inflate.as_mut() else {
                        return self.fail("a deflated entry");
                    };
                    let input = &data[..(left.min(data.len() as u64) as usize)];
                    let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
                    self.out.resize(4096, 0);
                    let status = inflate.decompress(input, &mut self.out, FlushDecompress::None);
                    let used = (inflate.total_in() - in_before) as usize;
                    let made = inflate.total_out() - out_before;
                    data = &data[used..];
                    let left = left - used as u64;
                    if !self.count(made) {
                        return;
                    }
                    self.flow = match status {
                        Err(_) => return self.fail("a deflated entry whose data does not inflate"),
                        Ok(Status::StreamEnd) => match descriptor {
                            Some(size) => Flow::Descriptor(size),
                            None if left > 0 => Flow::Skip(left),
                            None => Flow::Header,
                        },
                        // unzip reads no more of the entry than its size says (what the
                        // inflater still holds of it comes out first).
                        Ok(_) if left == 0 && made == 0 => Flow::Header,
                        Ok(_) if used == 0 && made == 0 => {
                            return self.fail("a deflated entry whose data does not inflate")
                        }
                        Ok(_) => Flow::Inflate { left, descriptor },
                    };
                }
            }
            self.at += (before - data.len()) as u64;
        }
    }

    /// How many more bytes the header being gathered needs (at least 1 while it is one).
    fn header_room(&self) -> usize {
        let carry = &self.carry;
        if carry.len() < LOCAL_SIZE {
            return LOCAL_SIZE - carry.len();
        }
        let name = le::<2>(carry, 26).unwrap_or_default() as usize;
        let extra = le::<2>(carry, 28).unwrap_or_default() as usize;
        LOCAL_SIZE + name + extra - carry.len()
    }

    /// Reads the local header gathered in `carry`, once it is whole.
    fn header(&mut self) {
        let carry = &self.carry;
        if carry.len() >= 4 && !carry.starts_with(LOCAL_SIGNATURE) {
            let central = [ENTRY_SIGNATURE, END_SIGNATURE, END64_SIGNATURE]
                .iter()
                .any(|signature| carry.starts_with(signature));
            return match central {
                true => self.flow = Flow::Done,
                false => self.fail("data where a local entry should begin"),
            };
        }
        if self.header_room() > 0 {
            return;
        }
        let header = std::mem::take(&mut self.carry);
        let start = self.at - header.len() as u64;
        let word = |at| le::<2>(&header, at).unwrap_or_default();
        let (flags, method) = (word(6), word(8));
        let mut csize = le::<4>(&header, 18).unwrap_or_default();
        let usize_ = le::<4>(&header, 22).unwrap_or_default();
        let extra = &header[LOCAL_SIZE + word(26) as usize..];
        let zip64 = extra_fields(extra).find(|&(id, _)| id == 1).map(|(_, d)| d);
        if let Some(zip64) = zip64 {
            let at = if usize_ == 0xffff_ffff { 8 } else { 0 };
            if csize == 0xffff_ffff {
                csize = le::<8>(zip64, at).unwrap_or(u64::MAX);
            }
        }
        if self.found.len() >= MAX_LOCAL_ENTRIES {
            return self.fail("more local entries than its central directory may list");
        }
        if flags & 1 != 0 {
            return self.fail("an encrypted entry");
        }
        let descriptor = (flags & 8 != 0).then_some(if zip64.is_some() { 20 } else { 12 });
        match method {
            0 if descriptor.is_some() => {
                self.found.push((start, 0));
                self.described.push(start);
                self.search = DescriptorSearch::new(if zip64.is_some() { 8 } else { 4 });
                self.flow = Flow::Search;
            }
            0 => {
                self.found.push((start, csize));
                self.written = self.written.saturating_add(csize);
                self.flow = match csize {
                    0 => Flow::Header,
                    size => Flow::Skip(size),
                };
            }
            8 => {
                self.found.push((start, 0));
                let inflate = self
                    .inflate
                    .get_or_insert_with(|| Box::new(Decompress::new(false)));
                inflate.reset(false);
                let left = if descriptor.is_some() {
                    u64::MAX
                } else {
                    csize
                };
                self.flow = Flow::Inflate { left, descriptor };
            }
            _ => self.fail("an entry compressed otherwise than stored or deflated"),
        }
    }
}

/// Reads a little-endian number of `width` bytes (4 or 8) at `at`.
fn le_wide(bytes: &[u8], at: usize, width: usize) -> Option<u64> {
    match width {
        4 => le::<4>(bytes, at),
        _ => le::<8>(bytes, at),
    }
}

/// Where a stored entry's data whose size follows it ends: at the first length `n` of data
/// followed by a data descriptor that agrees with it (its signature optional, the CRC-32 of
/// the `n` bytes, both sizes `n`). Each length is tested once the longest descriptor after it
/// is there, so a shorter descriptor found first is not taken over a longer one that begins
/// earlier; the CRC-32 is carried forward over the data and taken only where the sizes
/// agree: linear in the data.
struct DescriptorSearch {
    /// The width of the descriptor's size fields: 4, or 8 after a zip64 extra field.
    width: usize,
    /// The data bytes before `ahead` (every length up to it tested), or the data's length
    /// once its descriptor was found.
    data: u64,
    /// The CRC-32 of those bytes.
    crc: crc32fast::Hasher,
    /// The bytes after them, too few yet to test the length they begin at.
    ahead: Vec<u8>,
}

/// A stored entry's data descriptor found.
struct DescriptorEnd {
    /// How many of the bytes given this time the data and its descriptor take.
    used: usize,
    /// Bytes given before that follow the descriptor (at most 3).
    carry: Vec<u8>,
}

impl DescriptorSearch {
    /// A search at the start of an entry's data, its descriptor's size fields `width` wide.
    fn new(width: usize) -> Self {
        DescriptorSearch {
            width,
            data: 0,
            crc: crc32fast::Hasher::new(),
            ahead: Vec::new(),
        }
    }

    /// The bytes a length is tested on: the longest descriptor (with its signature).
    fn window(&self) -> usize {
        8 + 2 * self.width
    }

    /// The data descriptors at the start of `window` whose sizes are `len`, with its
    /// signature and without: the CRC-32 each gives, and its length.
    fn descriptors(&self, window: &[u8], len: u64) -> [Option<(u64, usize)>; 2] {
        let width = self.width;
        let sized = |at: usize| {
            le_wide(window, at, width) == Some(len)
                && le_wide(window, at + width, width) == Some(len)
        };
        let signed = window.starts_with(DESCRIPTOR_SIGNATURE) && sized(8);
        let unsigned = sized(4);
        [
            le::<4>(window, 4)
                .filter(|_| signed)
                .map(|crc| (crc, 8 + 2 * width)),
            le::<4>(window, 0)
                .filter(|_| unsigned)
                .map(|crc| (crc, 4 + 2 * width)),
        ]
    }

    /// Takes the data's next bytes: where its descriptor ends, once found.
    fn take(&mut self, data: &[u8]) -> Option<DescriptorEnd> {
        let kept = self.ahead.len();
        let mut bytes = std::mem::take(&mut self.ahead);
        bytes.extend_from_slice(data);
        let window = self.window();
        let tested = (bytes.len() + 1).saturating_sub(window);
        let mut hashed = 0;
        for at in 0..tested {
            let len = self.data + at as u64;
            let found = self.descriptors(&bytes[at..at + window], len);
            if found == [None, None] {
                continue;
            }
            self.crc.update(&bytes[hashed..at]);
            hashed = at;
            let crc = u64::from(self.crc.clone().finalize());
            if let Some((_, size)) = found.into_iter().flatten().find(|&(said, _)| said == crc) {
                self.data = len;
                let end = at + size;
                return Some(DescriptorEnd {
                    used: end.saturating_sub(kept),
                    carry: bytes[end.min(kept)..kept].to_vec(),
                });
            }
        }
        self.crc.update(&bytes[hashed..tested]);
        self.data += tested as u64;
        bytes.drain(..tested);
        self.ahead = bytes;
        None
    }
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
            let size = content.len() as u32;
            directory.extend(central(name, mode, [size, size], offset, extra));
        }
        closed(out, &directory, entries.len())
    }

    /// A central directory entry of a file `name` (its Unix `mode`, its `sizes`: unpacked,
    /// packed), whose local entry is at `offset`, with an `extra` field.
    fn central(name: &str, mode: u32, sizes: [u32; 2], offset: u32, extra: &[u8]) -> Vec<u8> {
        let mut out = b"PK\x01\x02\x1e\x03\x0a\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
        out.extend_from_slice(&sizes[1].to_le_bytes());
        out.extend_from_slice(&sizes[0].to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(mode << 16).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(extra);
        out
    }

    /// The local entries `out` followed by their `directory` of `count` entries and its end.
    fn closed(mut out: Vec<u8>, directory: &[u8], count: usize) -> Vec<u8> {
        let offset = out.len() as u32;
        out.extend_from_slice(directory);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(count as u16).to_le_bytes());
        out.extend_from_slice(&(count as u16).to_le_bytes());
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
                    size: 9,
                    packed: 9,
                    offset: 0,
                },
                ZipEntry {
                    name: "ln".into(),
                    also: vec!["ln".into(), "ln".into()],
                    symlink: true,
                    unix_extra: false,
                    oem_name: false,
                    size: 4,
                    packed: 4,
                    offset: 46,
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

    /// A local entry of `content` deflated, its sizes saying `declared`, or else (flag bit 3)
    /// given in a data descriptor after its data, with its signature.
    fn deflated(content: &[u8], declared: u32, descriptor: bool) -> Vec<u8> {
        let mut inflate = flate2::Compress::new(flate2::Compression::default(), false);
        let mut data = Vec::with_capacity(content.len() + 64);
        let _ = inflate.compress_vec(content, &mut data, flate2::FlushCompress::Finish);
        let flags: u16 = if descriptor { 8 } else { 0 };
        let mut out = b"PK\x03\x04\x14\0".to_vec();
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let (csize, usize_) = match descriptor {
            true => (0, 0),
            false => (data.len() as u32, declared),
        };
        out.extend_from_slice(&csize.to_le_bytes());
        out.extend_from_slice(&usize_.to_le_bytes());
        out.extend_from_slice(&[1, 0, 0, 0, b'x']);
        out.extend_from_slice(&data);
        if descriptor {
            out.extend_from_slice(b"PK\x07\x08\0\0\0\0");
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&declared.to_le_bytes());
        }
        out
    }

    #[test]
    fn what_unzip_writes_of_each_local_entry_is_counted_as_it_inflates() {
        // A tester's zip said 10 bytes for an entry that inflates to 50 MiB: unzip wrote it
        // all. What the data inflates to counts, whatever the sizes say.
        let big = vec![0u8; 200_000];
        let mut archive = deflated(&big, 10, false);
        let second = archive.len() as u64;
        archive.extend(deflated(b"print(1)", 8, true));
        let third = archive.len() as u64;
        archive.extend(zip(&[("s", false, b"stored")]));
        for piece in [1, 7, 100_000] {
            let mut local = LocalEntries::new(u64::MAX);
            for chunk in archive.chunks(piece) {
                local.push(chunk);
            }
            assert_eq!(local.finish(), Ok(()), "pieces of {piece}");
            assert_eq!(local.written_at(0), Some(200_000), "pieces of {piece}");
            assert_eq!(local.written_at(second), Some(8), "pieces of {piece}");
            assert_eq!(local.written_at(third), Some(6), "pieces of {piece}");
            assert_eq!(local.written_at(1), None);
        }
        let mut limited = LocalEntries::new(100_000);
        limited.push(&archive);
        assert!(limited.too_large && limited.finish().is_err());
        // What cannot be followed: a stored entry sized after its data with no descriptor
        // after it, another method, encryption, data between entries, an entry cut short.
        let mut stored_later = zip(&[("s", false, b"stored")]);
        stored_later[6] = 8;
        // Its sizes 0 in the header, as Python's zipfile writes a stored entry to a pipe.
        let mut streamed = stored_later.clone();
        streamed[18..26].fill(0);
        let mut bzip2 = zip(&[("s", false, b"stored")]);
        bzip2[8] = 12;
        let mut encrypted = zip(&[("s", false, b"stored")]);
        encrypted[6] = 1;
        let mut between = deflated(b"a", 1, false);
        between.extend(b"junk");
        between.extend(zip(&[("s", false, b"stored")]));
        let cut = deflated(&big, 10, true);
        for (archive, fault) in [
            (
                stored_later,
                "a stored entry with no data descriptor after its data",
            ),
            (
                streamed,
                "a stored entry with no data descriptor after its data",
            ),
            (
                bzip2,
                "an entry compressed otherwise than stored or deflated",
            ),
            (encrypted, "an encrypted entry"),
            (between, "data where a local entry should begin"),
            (cut[..cut.len() / 2].to_vec(), "a local entry cut short"),
        ] {
            let mut local = LocalEntries::new(u64::MAX);
            local.push(&archive);
            assert_eq!(local.finish(), Err(fault));
        }
    }

    /// A local entry `name` of `content` stored, its size after its data (flag bit 3, sizes 0
    /// in its header) in a data descriptor with its `signature` or not, 8-byte sizes after a
    /// zip64 extra field (`zip64`), as Python's zipfile and Go's archive/zip write one.
    fn streamed(name: &str, content: &[u8], signature: bool, zip64: bool) -> Vec<u8> {
        let extra: &[u8] = if zip64 {
            &[1, 0, 16, 0, 0, 0, 0, 0]
        } else {
            &[]
        };
        let extra = [extra, &[0; 16][..extra.len() * 2]].concat();
        let mut out = b"PK\x03\x04\x14\0\x08\0\0\0\0\0\0\0\0\0\0\0".to_vec();
        out.extend_from_slice(&[if zip64 { 0xff } else { 0 }; 8]);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(content);
        out.extend(descriptor(content, signature, zip64));
        out
    }

    /// The data descriptor of `data`: with its `signature` or not, 8-byte sizes (`zip64`).
    fn descriptor(data: &[u8], signature: bool, zip64: bool) -> Vec<u8> {
        let mut out = match signature {
            true => DESCRIPTOR_SIGNATURE.to_vec(),
            false => Vec::new(),
        };
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        let size = (data.len() as u64).to_le_bytes();
        let width = if zip64 { 8 } else { 4 };
        out.extend_from_slice(&[&size[..width], &size[..width]].concat());
        out
    }

    /// A file of a zip: its name, its content, and the sizes (unpacked, packed) its directory
    /// gives it, where not its content's.
    type File<'a> = (&'a str, &'a [u8], Option<[u32; 2]>);

    /// A zip of `entries` written by [`streamed`], with its directory.
    fn streamed_zip(entries: &[File], signature: bool, zip64: bool) -> Vec<u8> {
        let (mut out, mut directory) = (Vec::new(), Vec::new());
        for &(name, content, sizes) in entries {
            let size = content.len() as u32;
            let sizes = sizes.unwrap_or([size, size]);
            directory.extend(central(name, 0o100644, sizes, out.len() as u32, b""));
            out.extend(streamed(name, content, signature, zip64));
        }
        closed(out, &directory, entries.len())
    }

    /// The local entries of `archive` fed `piece` bytes at a time, and its directory.
    fn read_in_pieces(archive: &[u8], piece: usize) -> (LocalEntries, Vec<ZipEntry>) {
        let mut local = LocalEntries::new(u64::MAX);
        for chunk in archive.chunks(piece) {
            local.push(chunk);
        }
        let directory = entries(archive, archive.len() as u64).unwrap_or_default();
        (local, directory)
    }

    /// Data holding what a data descriptor of its bytes before it could be but for its CRC,
    /// `count` times, without the signature and with it.
    fn near_descriptors(count: usize, zip64: bool) -> Vec<u8> {
        let mut data = b"x".to_vec();
        for i in 0..count {
            let mut near = descriptor(&data, i % 2 == 0, zip64);
            let crc_at = if i % 2 == 0 { 4 } else { 0 };
            near[crc_at] ^= 1;
            data.extend(near);
        }
        data
    }

    #[test]
    fn a_stored_entry_sized_after_its_data_ends_at_the_first_descriptor_that_agrees() {
        for (signature, zip64) in [(true, false), (false, false), (true, true), (false, true)] {
            let near = near_descriptors(300, zip64);
            let files: [File; 4] = [
                ("main.py", b"print(1)\n", None),
                ("empty", b"", None),
                ("near.bin", &near, None),
                ("PK.bin", b"PK\x07\x08PK\x03\x04PK\x01\x02", None),
            ];
            let archive = streamed_zip(&files, signature, zip64);
            for piece in [1, 2, 3, 5, 7, 13, 31, 64, 4096, archive.len()] {
                let case = format!("signature {signature}, zip64 {zip64}, pieces of {piece}");
                let (local, directory) = read_in_pieces(&archive, piece);
                assert_eq!(local.finish(), Ok(()), "{case}");
                assert_eq!(directory.len(), files.len(), "{case}");
                for (entry, (_, content, _)) in directory.iter().zip(files) {
                    let written = local.written_at(entry.offset);
                    assert_eq!(written, Some(content.len() as u64), "{case}");
                    assert!(!local.sizes_differ(entry), "{case}");
                }
                assert_eq!(local.written(), (9 + near.len() + 12) as u64, "{case}");
            }
        }
        // It counts toward the limit as it streams.
        let archive = streamed_zip(&[("big", &[7u8; 5000], None)], true, false);
        let mut limited = LocalEntries::new(4096);
        for chunk in archive.chunks(100) {
            limited.push(chunk);
        }
        assert!(limited.too_large && limited.finish().is_err());
    }

    #[test]
    fn a_descriptor_forged_inside_stored_data_ends_it_only_where_the_directory_agrees() {
        // The data holds a descriptor of its first 3 bytes, then what reads as the central
        // directory's start: the entry is read as 3 bytes, and that is all of it read.
        let forged = [
            &b"abc"[..],
            &descriptor(b"abc", true, false),
            b"PK\x01\x02 rest",
        ]
        .concat();
        let size = forged.len() as u32;
        for (sizes, differ) in [(None, true), (Some([3, size]), true), (Some([3, 3]), false)] {
            let archive = streamed_zip(&[("main.py", &forged, sizes)], true, false);
            for piece in [1, 5, archive.len()] {
                let (local, directory) = read_in_pieces(&archive, piece);
                assert_eq!(local.finish(), Ok(()));
                assert_eq!(local.written_at(0), Some(3));
                // unzip writes as many bytes as the directory's packed size: it must be 3.
                assert_eq!(local.sizes_differ(&directory[0]), differ, "{sizes:?}");
            }
        }
        // A local entry hidden after a forged descriptor is read as one; the real descriptor
        // after it is then no local entry.
        let hidden = streamed("hidden.py", b"print(2)\n", false, false);
        let smuggled = [&b"abc"[..], &descriptor(b"abc", false, false), &hidden].concat();
        let archive = streamed_zip(&[("main.py", &smuggled, None)], false, false);
        let hidden_at = (LOCAL_SIZE + "main.py".len() + 3 + 12) as u64;
        for piece in [1, 4, archive.len()] {
            let (local, _) = read_in_pieces(&archive, piece);
            assert_eq!(local.finish(), Err("data where a local entry should begin"));
            assert_eq!(local.written_at(0), Some(3));
            assert_eq!(local.written_at(hidden_at), Some(9), "{:?}", local.found);
        }
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
