//! A gzip stream decoded as its bytes come in, member after member as `gzip -d` reads them,
//! into a [`Sink`] that may say it has had enough (a tar archive's end): the rest is then not
//! inflated. The inflater and its output buffer are kept per thread between streams, so a
//! small archive costs no allocation of its 40 KiB of state.

use std::cell::RefCell;

use flate2::{Crc, Decompress, FlushDecompress, Status};

/// Output inflated per step: past a sink's end, at most this much is inflated for nothing.
const STEP: usize = 4096;

/// The longest gzip member header taken (a name or comment longer than this is refused).
const MAX_HEADER: usize = 64 * 1024;

/// Where the inflated bytes go.
pub trait Sink {
    /// Takes inflated bytes.
    fn take(&mut self, data: &[u8]);
    /// Whether it wants no more: the rest of the stream is not inflated.
    fn satisfied(&self) -> bool;
}

/// Why the stream is not gzip that `gzip -d` would read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GunzipError {
    /// No gzip header where one must be, or a header gzip refuses (what).
    BadHeader(&'static str),
    /// The deflate data does not inflate (the inflater's text).
    BadData(String),
    /// A member's CRC or length does not match what it inflated to.
    BadTrailer,
    /// The stream ends inside a member.
    Truncated,
}

impl std::fmt::Display for GunzipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadHeader(what) => write!(f, "{what}"),
            Self::BadData(e) => write!(f, "its data does not inflate: {e}"),
            Self::BadTrailer => write!(f, "a member's checksum or length does not match"),
            Self::Truncated => write!(f, "it ends inside a member"),
        }
    }
}

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// A member's header, gathered in `carry`.
    Header,
    /// A member's deflate data.
    Body,
    /// A member's 8-byte trailer, gathered in `carry`.
    Trailer,
    /// After a member, zeros and whatever follows them: gzip ignores them, and so does this.
    Ignored,
}

/// The inflater and output buffer one stream uses.
struct Inflater {
    inflate: Decompress,
    out: Vec<u8>,
}

thread_local! {
    /// The inflater of the thread's last stream, kept for its next.
    static SPARE: RefCell<Option<Box<Inflater>>> = const { RefCell::new(None) };
}

/// A gzip stream being read (see the module's text).
pub struct Gunzip {
    stage: Stage,
    carry: Vec<u8>,
    crc: Crc,
    members: u64,
    inflater: Option<Box<Inflater>>,
}

impl Default for Gunzip {
    fn default() -> Self {
        Self::new()
    }
}

impl Gunzip {
    /// A stream at its start.
    pub fn new() -> Self {
        let inflater = SPARE
            .with(|spare| spare.borrow_mut().take())
            .unwrap_or_else(|| {
                Box::new(Inflater {
                    inflate: Decompress::new(false),
                    out: vec![0; STEP],
                })
            });
        Gunzip {
            stage: Stage::Header,
            carry: Vec::new(),
            crc: Crc::new(),
            members: 0,
            inflater: Some(inflater),
        }
    }

    /// Takes the stream's next bytes, inflating them into `sink` until it is satisfied.
    pub fn write(&mut self, mut input: &[u8], sink: &mut dyn Sink) -> Result<(), GunzipError> {
        while !input.is_empty() && !sink.satisfied() {
            match self.stage {
                Stage::Ignored => return Ok(()),
                Stage::Header => {
                    let take = input.len().min(MAX_HEADER + 1 - self.carry.len());
                    self.carry.extend_from_slice(&input[..take]);
                    match header_len(&self.carry, self.members > 0)? {
                        Header::Incomplete if self.carry.len() > MAX_HEADER => {
                            return Err(GunzipError::BadHeader("a member header over 64 KiB"))
                        }
                        Header::Incomplete => input = &input[take..],
                        Header::NotMember => {
                            self.carry.clear();
                            self.stage = Stage::Ignored;
                        }
                        Header::Complete(len) => {
                            input = &input[take - (self.carry.len() - len)..];
                            self.carry.clear();
                            self.crc.reset();
                            if let Some(inflater) = self.inflater.as_mut() {
                                inflater.inflate.reset(false);
                            }
                            self.stage = Stage::Body;
                        }
                    }
                }
                Stage::Body => {
                    let Some(inflater) = self.inflater.as_mut() else {
                        return Err(GunzipError::Truncated);
                    };
                    let (before_in, before_out) =
                        (inflater.inflate.total_in(), inflater.inflate.total_out());
                    let status = inflater
                        .inflate
                        .decompress(input, &mut inflater.out, FlushDecompress::None)
                        .map_err(|e| GunzipError::BadData(e.to_string()))?;
                    let used = (inflater.inflate.total_in() - before_in) as usize;
                    let made = (inflater.inflate.total_out() - before_out) as usize;
                    input = &input[used..];
                    self.crc.update(&inflater.out[..made]);
                    sink.take(&inflater.out[..made]);
                    match status {
                        Status::StreamEnd => self.stage = Stage::Trailer,
                        _ if used == 0 && made == 0 => {
                            return Err(GunzipError::BadData("no progress".to_string()))
                        }
                        _ => {}
                    }
                }
                Stage::Trailer => {
                    let take = input.len().min(8 - self.carry.len());
                    self.carry.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.carry.len() == 8 {
                        let word = |at: usize| {
                            u32::from_le_bytes([
                                self.carry[at],
                                self.carry[at + 1],
                                self.carry[at + 2],
                                self.carry[at + 3],
                            ])
                        };
                        if word(0) != self.crc.sum() || word(4) != self.crc.amount() {
                            return Err(GunzipError::BadTrailer);
                        }
                        self.carry.clear();
                        self.members += 1;
                        self.stage = Stage::Header;
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream's end: an error when it was not gzip read whole (unless the sink was
    /// satisfied before the end, as nothing after that is read).
    pub fn finish(&self, sink: &dyn Sink) -> Result<(), GunzipError> {
        if sink.satisfied() {
            return Ok(());
        }
        match self.stage {
            Stage::Ignored => Ok(()),
            Stage::Header if self.members > 0 && self.carry.is_empty() => Ok(()),
            Stage::Header if self.members == 0 && self.carry.is_empty() => {
                Err(GunzipError::BadHeader("it is empty"))
            }
            _ => Err(GunzipError::Truncated),
        }
    }
}

impl Drop for Gunzip {
    fn drop(&mut self) {
        if let Some(inflater) = self.inflater.take() {
            SPARE.with(|spare| {
                if let Ok(mut spare) = spare.try_borrow_mut() {
                    *spare = Some(inflater);
                }
            });
        }
    }
}

/// What the bytes gathered for a member's header hold.
enum Header {
    /// A whole header of this many bytes.
    Complete(usize),
    /// Not enough bytes yet.
    Incomplete,
    /// After a member, a zero byte: gzip ignores it and all that follows.
    NotMember,
}

/// Reads a member header (RFC 1952) from `bytes`; `after_member`: a member came before it.
fn header_len(bytes: &[u8], after_member: bool) -> Result<Header, GunzipError> {
    let magic = [0x1f, 0x8b];
    let seen = bytes.len().min(2);
    if bytes[..seen] != magic[..seen] {
        // After a member, gzip -d reads on through a member of its older formats (an old
        // gzip's 1f 9e, pack's 1f 1e, compress's 1f 9d, LZH's 1f a0) and, where it begins its
        // input buffer, a zip's local entry (PK 03 04), none of which is read here. It stops
        // at anything else, and at zeros whatever follows them: only those are let be.
        return match after_member {
            true if bytes[0] != 0 => Err(GunzipError::BadHeader(
                "data after a member that is neither zeros nor a gzip member",
            )),
            true => Ok(Header::NotMember),
            false => Err(GunzipError::BadHeader("no gzip header")),
        };
    }
    if bytes.len() < 10 {
        return Ok(Header::Incomplete);
    }
    if bytes[2] != 8 {
        return Err(GunzipError::BadHeader(
            "a compression method other than deflate",
        ));
    }
    let flags = bytes[3];
    if flags & 0xe0 != 0 {
        return Err(GunzipError::BadHeader("reserved header flags set"));
    }
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(len) = bytes.get(at..at + 2) else {
            return Ok(Header::Incomplete);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            let Some(end) = bytes.get(at..).and_then(|b| b.iter().position(|&c| c == 0)) else {
                return Ok(Header::Incomplete);
            };
            at += end + 1;
        }
    }
    if flags & 0x02 != 0 {
        let Some(stored) = bytes.get(at..at + 2) else {
            return Ok(Header::Incomplete);
        };
        let mut crc = Crc::new();
        crc.update(&bytes[..at]);
        if u16::from_le_bytes([stored[0], stored[1]]) != (crc.sum() & 0xffff) as u16 {
            return Err(GunzipError::BadHeader(
                "a header checksum that does not match",
            ));
        }
        at += 2;
    }
    match bytes.len() >= at {
        true => Ok(Header::Complete(at)),
        false => Ok(Header::Incomplete),
    }
}

/// A gzip stream of `data`, for the unit tests of this reader and of its callers.
#[cfg(test)]
pub(crate) fn gz(data: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap_or_default();
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it takes, satisfied once it has `enough`.
    struct Keep {
        got: Vec<u8>,
        enough: usize,
    }

    impl Sink for Keep {
        fn take(&mut self, data: &[u8]) {
            self.got.extend_from_slice(data);
        }
        fn satisfied(&self) -> bool {
            self.got.len() >= self.enough
        }
    }

    fn read(stream: &[u8], piece: usize, enough: usize) -> (Result<(), GunzipError>, Vec<u8>) {
        let mut sink = Keep {
            got: Vec::new(),
            enough,
        };
        let mut gunzip = Gunzip::new();
        for chunk in stream.chunks(piece.max(1)) {
            if let Err(e) = gunzip.write(chunk, &mut sink) {
                return (Err(e), sink.got);
            }
        }
        (gunzip.finish(&sink), sink.got)
    }

    #[test]
    fn members_inflate_whole_in_any_pieces_and_stop_once_the_sink_is_satisfied() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = gz(&data[..20_000]);
        stream.extend(gz(&data[20_000..]));
        for piece in [1, 7, 4096, 1 << 20] {
            let (result, got) = read(&stream, piece, usize::MAX);
            assert_eq!(result, Ok(()), "pieces of {piece}");
            assert_eq!(got, data, "pieces of {piece}");
        }
        let (result, got) = read(&stream, 1 << 20, 10);
        assert_eq!(result, Ok(()));
        assert!(got.len() <= STEP, "{} inflated", got.len());
        let mut trailing = gz(b"abc");
        trailing.extend([0u8; 100]);
        assert_eq!(read(&trailing, 3, usize::MAX), (Ok(()), b"abc".to_vec()));
    }

    #[test]
    fn data_gzip_may_read_on_into_after_a_member_is_refused() {
        // gzip -d inflates a member with the old gzip magic 1f 9e (and unpacks pack's 1f 1e,
        // compress's 1f 9d and LZH's 1f a0) after a first member, and a zip's local entry
        // where it begins gzip's 256 KiB input buffer: a tar archive without its end would go
        // on there, with whatever entries that member holds.
        let mut zip_entry = b"PK\x03\x04\x14\0\0\0\x08\0".to_vec();
        zip_entry.extend([0u8; 20]);
        for second in [0x9e, 0x1e, 0x9d, 0xa0] {
            let mut stream = gz(b"abc");
            let mut old = gz(b"def");
            old[1] = second;
            stream.extend(old);
            let mut zipped = gz(b"abc");
            zipped.extend(&zip_entry);
            for (stream, piece) in [(&stream, 1), (&stream, 1 << 20), (&zipped, 3)] {
                assert_eq!(
                    read(stream, piece, usize::MAX).0,
                    Err(GunzipError::BadHeader(
                        "data after a member that is neither zeros nor a gzip member"
                    )),
                    "{second:x} in pieces of {piece}"
                );
            }
        }
        let mut zeros_then_junk = gz(b"abc");
        zeros_then_junk.extend([0, 0, 0x1f, 0x9e]);
        assert_eq!(read(&zeros_then_junk, 1, usize::MAX).0, Ok(()));
    }

    #[test]
    fn what_gzip_refuses_or_cannot_read_whole_is_told() {
        let good = gz(b"hello");
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        let mut reserved = good.clone();
        reserved[3] = 0x20;
        let cases: [(&[u8], GunzipError); 5] = [
            (b"print(1)", GunzipError::BadHeader("no gzip header")),
            (&good[..n - 3], GunzipError::Truncated),
            (&bad_crc, GunzipError::BadTrailer),
            (
                &reserved,
                GunzipError::BadHeader("reserved header flags set"),
            ),
            (b"", GunzipError::BadHeader("it is empty")),
        ];
        for (stream, error) in cases {
            assert_eq!(read(stream, 5, usize::MAX).0, Err(error.clone()), "{error}");
        }
    }
}
