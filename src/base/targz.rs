//! A `.tar.gz` written as a stream of known length: ustar entries (GNU long names when a path
//! does not fit) inside gzip made of stored (uncompressed) deflate blocks. Every gzip reader
//! takes it; nothing is compressed, so it costs one CRC-32 pass and no compressor state, and its
//! exact length is known before the first byte (a `Content-Length`, no buffering).

use std::io::{self, Read};

/// Opens an entry's content when the stream reaches it (so only one is open at a time).
pub type Opener = Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>;

/// One file of the archive.
pub struct Entry {
    /// Its path inside the archive (relative, `/` separators).
    pub path: String,
    /// Its exact size: the stream fails if the content gives more or fewer bytes.
    pub size: u64,
    /// Unix seconds of its modification time.
    pub mtime: u64,
    /// Its content.
    pub open: Opener,
}

const BLOCK: u64 = 512;
/// The largest stored deflate block.
const STORED_MAX: u64 = 65535;
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// The size in bytes of the tar stream of these entries.
fn tar_len(entries: &[Entry]) -> u64 {
    let ends = 2 * BLOCK;
    entries.iter().fold(ends, |total, e| {
        let long_name = if e.path.len() > 100 {
            BLOCK + padded(e.path.len() as u64 + 1)
        } else {
            0
        };
        total + long_name + BLOCK + padded(e.size)
    })
}

/// The size of gzip with stored blocks around `raw` bytes.
fn gzip_len(raw: u64) -> u64 {
    let blocks = raw.div_ceil(STORED_MAX).max(1);
    GZIP_HEADER.len() as u64 + raw + 5 * blocks + 8
}

/// Writes `value` as a NUL-terminated octal field, or in base-256 when it does not fit.
fn numeric(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() <= digits {
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        let bytes = value.to_be_bytes();
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

/// One 512-byte ustar header.
fn header(name: &[u8], size: u64, mtime: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = &name[..name.len().min(100)];
    h[..name.len()].copy_from_slice(name);
    numeric(&mut h[100..108], 0o644);
    numeric(&mut h[108..116], 0);
    numeric(&mut h[116..124], 0);
    numeric(&mut h[124..136], size);
    numeric(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// The header block(s) of an entry: a GNU `././@LongLink` entry first when its path is long.
fn headers(entry: &Entry) -> Vec<u8> {
    let path = entry.path.as_bytes();
    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if path.len() > 100 {
        let long = path.len() as u64 + 1;
        out.extend_from_slice(&header(b"././@LongLink", long, 0, b'L'));
        out.extend_from_slice(path);
        out.resize(out.len() + (padded(long) - long) as usize + 1, 0);
    }
    out.extend_from_slice(&header(path, entry.size, entry.mtime, b'0'));
    out
}

/// Bytes made up front (headers, padding, framing) waiting to go out.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    at: usize,
}

impl Pending {
    fn set(&mut self, bytes: Vec<u8>) {
        self.bytes = bytes;
        self.at = 0;
    }

    /// Copies what fits of the rest into `buf`; `None` once all went out.
    fn give(&mut self, buf: &mut [u8]) -> Option<usize> {
        let rest = &self.bytes[self.at..];
        if rest.is_empty() {
            return None;
        }
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Some(n)
    }
}

/// How much of `buf` to fill when `left` bytes remain.
fn room(buf: &[u8], left: u64) -> usize {
    buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
}

/// The tar stream: headers, contents (checked against their sizes), padding, two zero blocks.
struct TarStream {
    entries: std::vec::IntoIter<Entry>,
    pending: Pending,
    content: Option<(Box<dyn Read + Send>, u64, String)>,
    padding: u64,
    finished: bool,
}

impl TarStream {
    fn refill(&mut self) -> io::Result<bool> {
        if self.padding > 0 {
            self.pending.set(vec![0; self.padding as usize]);
            self.padding = 0;
            return Ok(true);
        }
        match self.entries.next() {
            Some(entry) => {
                self.pending.set(headers(&entry));
                self.padding = padded(entry.size) - entry.size;
                let reader = (entry.open)()?;
                self.content = Some((reader, entry.size, entry.path));
                Ok(true)
            }
            None if !self.finished => {
                self.pending.set(vec![0; 2 * BLOCK as usize]);
                self.finished = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(n) = self.pending.give(buf) {
                return Ok(n);
            }
            if let Some((reader, left, path)) = &mut self.content {
                if *left > 0 {
                    let want = room(buf, *left);
                    let n = reader.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{path} ended {left} bytes short of its recorded size"),
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                self.content = None;
            }
            if !self.refill()? {
                return Ok(0);
            }
        }
    }
}

/// CRC-32 (IEEE, as gzip uses it), one table lookup per byte.
struct Crc32 {
    table: [u32; 256],
    value: u32,
}

impl Crc32 {
    fn new() -> Crc32 {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc32 {
            table,
            value: 0xFFFF_FFFF,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.value =
                self.table[((self.value ^ u32::from(b)) & 0xFF) as usize] ^ (self.value >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.value
    }
}

/// gzip around a stream of known length, in stored deflate blocks.
pub struct TarGz {
    tar: TarStream,
    raw_len: u64,
    raw_done: u64,
    crc: Crc32,
    /// Framing bytes (gzip header, a block header, the trailer) waiting to go out.
    framing: Pending,
    /// Bytes left in the current stored block.
    block_left: u64,
    trailer_sent: bool,
    total: u64,
}

impl TarGz {
    /// A `.tar.gz` of these entries, in this order.
    pub fn new(entries: Vec<Entry>) -> TarGz {
        let raw_len = tar_len(&entries);
        TarGz {
            tar: TarStream {
                entries: entries.into_iter(),
                pending: Pending::default(),
                content: None,
                padding: 0,
                finished: false,
            },
            raw_len,
            raw_done: 0,
            crc: Crc32::new(),
            framing: Pending {
                bytes: GZIP_HEADER.to_vec(),
                at: 0,
            },
            block_left: 0,
            trailer_sent: false,
            total: gzip_len(raw_len),
        }
    }

    /// The exact number of bytes the stream gives.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Never true: even an empty archive has its end blocks.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn next_framing(&mut self) -> bool {
        if self.raw_done < self.raw_len {
            let size = (self.raw_len - self.raw_done).min(STORED_MAX);
            let last = u8::from(self.raw_done + size == self.raw_len);
            let len = size as u16;
            let mut block = vec![last];
            block.extend_from_slice(&len.to_le_bytes());
            block.extend_from_slice(&(!len).to_le_bytes());
            self.framing.set(block);
            self.block_left = size;
        } else if !self.trailer_sent {
            let mut trailer = self.crc.finish().to_le_bytes().to_vec();
            trailer.extend_from_slice(&((self.raw_len & 0xFFFF_FFFF) as u32).to_le_bytes());
            self.framing.set(trailer);
            self.trailer_sent = true;
        } else {
            return false;
        }
        true
    }
}

impl Read for TarGz {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(n) = self.framing.give(buf) {
                return Ok(n);
            }
            if self.block_left > 0 {
                let want = room(buf, self.block_left);
                let n = self.tar.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the archive ended before its announced length",
                    ));
                }
                self.crc.update(&buf[..n]);
                self.block_left -= n as u64;
                self.raw_done += n as u64;
                return Ok(n);
            }
            if !self.next_framing() {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn entry(path: &str, content: Vec<u8>) -> Entry {
        Entry {
            path: path.to_string(),
            size: content.len() as u64,
            mtime: 1_764_355_200,
            open: Box::new(move || Ok(Box::new(io::Cursor::new(content)) as Box<dyn Read + Send>)),
        }
    }

    #[test]
    fn the_crc_is_the_standard_one() {
        let mut crc = Crc32::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
    }

    #[test]
    fn system_tar_extracts_what_it_gives_with_its_announced_length() {
        let long = format!("{}/deep/{}.txt", "d".repeat(60), "n".repeat(70));
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let archive = TarGz::new(vec![
            entry("result.txt", b"hello\n".to_vec()),
            entry("sub/empty.bin", Vec::new()),
            entry(&long, b"long name\n".to_vec()),
            entry("big.bin", big.clone()),
        ]);
        let announced = archive.len();
        let mut bytes = Vec::new();
        let mut reader = archive;
        reader.read_to_end(&mut bytes).expect("read");
        assert_eq!(bytes.len() as u64, announced);

        let dir = std::env::temp_dir().join(format!("tp-targz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("a.tar.gz"), &bytes).expect("write");
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(dir.join("a.tar.gz"))
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("tar runs");
        assert!(status.success());
        assert_eq!(
            std::fs::read(dir.join("result.txt")).expect("r"),
            b"hello\n"
        );
        assert_eq!(
            std::fs::read(dir.join("sub/empty.bin")).expect("e").len(),
            0
        );
        assert_eq!(std::fs::read(dir.join(&long)).expect("l"), b"long name\n");
        assert_eq!(std::fs::read(dir.join("big.bin")).expect("b"), big);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_short_content_is_an_error_not_a_wrong_archive() {
        let mut short = entry("x", b"abc".to_vec());
        short.size = 10;
        let mut bytes = Vec::new();
        let result = TarGz::new(vec![short]).read_to_end(&mut bytes);
        assert!(result.is_err());
    }
}
