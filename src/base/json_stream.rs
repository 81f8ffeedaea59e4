//! A JSON object read from a reader in fixed memory, never whole: [`string_members`] finds
//! where its string members begin, [`StringReader`] decodes one string a piece at a time, and
//! [`take_text`] turns decoded bytes into text. A finished job's collected logs
//! (`{"stderr": "...", "stdout": "..."}`, megabytes each) are replayed to its followers so.

use std::fmt;
use std::io::{self, Read};

/// The read buffer.
const BUFFER: usize = 16 * 1024;

/// Longest member name kept to be compared (longer ones are read past, never asked for).
const MAX_NAME: usize = 256;

/// Deepest nesting of arrays and objects read past.
const MAX_DEPTH: usize = 128;

/// What U+FFFD, the replacement character, is in UTF-8.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Why a JSON document could not be read.
#[derive(Debug)]
pub enum JsonStreamError {
    /// Its reader failed.
    Io(io::Error),
    /// It is not what JSON allows here, at this byte (counted from the reader's first).
    Malformed {
        /// Where.
        at: u64,
        /// What was wrong.
        why: &'static str,
    },
}

impl fmt::Display for JsonStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Malformed { at, why } => write!(f, "not JSON at byte {at}: {why}"),
        }
    }
}

impl std::error::Error for JsonStreamError {}

impl From<io::Error> for JsonStreamError {
    fn from(e: io::Error) -> Self {
        JsonStreamError::Io(e)
    }
}

/// Bytes of a reader through a fixed buffer, and where the next one lies.
struct Bytes<R> {
    reader: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Where `buf[0]` lies in the reader's bytes.
    base: u64,
}

impl<R: Read> Bytes<R> {
    fn new(reader: R) -> Self {
        Bytes {
            reader,
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            base: 0,
        }
    }

    /// Where the next byte lies.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The bytes read and not yet taken; empty once the reader ended.
    fn available(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            self.base += self.len as u64;
            self.pos = 0;
            self.len = loop {
                match self.reader.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
        }
        Ok(&self.buf[self.pos..self.len])
    }

    /// Takes `n` of the [`Bytes::available`] bytes.
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
    }

    /// The next byte, not taken; None at the end.
    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(self.available()?.first().copied())
    }

    /// The next byte, taken; None at the end.
    fn next(&mut self) -> io::Result<Option<u8>> {
        let byte = self.peek()?;
        self.consume(1);
        Ok(byte)
    }

    /// The next byte, taken; an error at the end.
    fn next_in(&mut self, what: &'static str) -> Result<u8, JsonStreamError> {
        self.next()?.ok_or_else(|| self.malformed(what))
    }

    /// Takes the whitespace before the next token; gives the token's first byte, not taken.
    fn skip_whitespace(&mut self) -> io::Result<Option<u8>> {
        while let Some(byte) = self.peek()? {
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return Ok(Some(byte));
            }
            self.consume(1);
        }
        Ok(None)
    }

    /// Takes `wanted` after any whitespace.
    fn expect(&mut self, wanted: u8, why: &'static str) -> Result<(), JsonStreamError> {
        match self.skip_whitespace()? {
            Some(byte) if byte == wanted => {
                self.consume(1);
                Ok(())
            }
            _ => Err(self.malformed(why)),
        }
    }

    fn malformed(&self, why: &'static str) -> JsonStreamError {
        JsonStreamError::Malformed {
            at: self.offset(),
            why,
        }
    }

    /// Reads a string's bytes after its opening quote up to its closing quote, taken: decoded
    /// into `into` when they are at most `keep` bytes (then true), else only read past.
    fn string(&mut self, into: &mut Vec<u8>, keep: usize) -> Result<bool, JsonStreamError> {
        let mut decoder = Decoder::default();
        if decoder.run(self, into, keep.saturating_add(1))? {
            return Ok(into.len() <= keep);
        }
        let mut past = Vec::with_capacity(BUFFER + 8);
        loop {
            past.clear();
            if decoder.run(self, &mut past, BUFFER)? {
                return Ok(false);
            }
        }
    }
}

/// Decodes a string's bytes after its opening quote: escapes undone, a lone UTF-16 surrogate
/// escape read as U+FFFD.
#[derive(Default)]
struct Decoder {
    /// An escaped high surrogate waiting for its low half.
    high: Option<u32>,
}

impl Decoder {
    /// Decodes into `out` until it holds `up_to` bytes (or a few more: an escape's character)
    /// or the string's closing quote is taken; true once it is.
    fn run<R: Read>(
        &mut self,
        bytes: &mut Bytes<R>,
        out: &mut Vec<u8>,
        up_to: usize,
    ) -> Result<bool, JsonStreamError> {
        while out.len() < up_to {
            let available = bytes.available()?;
            if available.is_empty() {
                return Err(bytes.malformed("a string does not end"));
            }
            let room = up_to - out.len();
            let scan = &available[..available.len().min(room)];
            match scan.iter().position(|&b| b == b'"' || b == b'\\') {
                None => {
                    self.lone_high(out);
                    out.extend_from_slice(scan);
                    let n = scan.len();
                    bytes.consume(n);
                }
                Some(at) => {
                    let quote = scan[at] == b'"';
                    if at > 0 {
                        self.lone_high(out);
                        out.extend_from_slice(&scan[..at]);
                    }
                    bytes.consume(at + 1);
                    if quote {
                        self.lone_high(out);
                        return Ok(true);
                    }
                    self.escape(bytes, out)?;
                }
            }
        }
        Ok(false)
    }

    /// An escaped high surrogate that no low half follows is U+FFFD.
    fn lone_high(&mut self, out: &mut Vec<u8>) {
        if self.high.take().is_some() {
            out.extend_from_slice(REPLACEMENT);
        }
    }

    /// Decodes the escape after a backslash.
    fn escape<R: Read>(
        &mut self,
        bytes: &mut Bytes<R>,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonStreamError> {
        let code = match bytes.next_in("a string ends inside an escape")? {
            b'u' => {
                let mut code = 0u32;
                for _ in 0..4 {
                    let digit = bytes.next_in("a string ends inside an escape")?;
                    let value = char::from(digit)
                        .to_digit(16)
                        .ok_or_else(|| bytes.malformed("a \\u escape without 4 hex digits"))?;
                    code = code * 16 + value;
                }
                code
            }
            b'"' => u32::from(b'"'),
            b'\\' => u32::from(b'\\'),
            b'/' => u32::from(b'/'),
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => u32::from(b'\n'),
            b'r' => u32::from(b'\r'),
            b't' => u32::from(b'\t'),
            _ => return Err(bytes.malformed("an unknown escape")),
        };
        if let Some(high) = self.high.take() {
            if (0xDC00..0xE000).contains(&code) {
                let joined = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00);
                push_char(out, joined);
                return Ok(());
            }
            out.extend_from_slice(REPLACEMENT);
        }
        if (0xD800..0xDC00).contains(&code) {
            self.high = Some(code);
        } else {
            push_char(out, code);
        }
        Ok(())
    }
}

/// Appends character `code` in UTF-8 (U+FFFD for a lone low surrogate).
fn push_char(out: &mut Vec<u8>, code: u32) {
    let c = char::from_u32(code).unwrap_or('\u{FFFD}');
    out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes());
}

/// Reads past one value whose first byte is next.
fn skip_value<R: Read>(bytes: &mut Bytes<R>) -> Result<(), JsonStreamError> {
    let mut depth = 0usize;
    loop {
        match bytes.skip_whitespace()? {
            None => return Err(bytes.malformed("the document ends inside a value")),
            Some(b'"') => {
                bytes.consume(1);
                bytes.string(&mut Vec::new(), 0)?;
            }
            Some(b'{' | b'[') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(bytes.malformed("nested too deep"));
                }
                bytes.consume(1);
                continue;
            }
            Some(b'}' | b']') if depth > 0 => {
                depth -= 1;
                bytes.consume(1);
            }
            Some(b',' | b':') if depth > 0 => {
                bytes.consume(1);
                continue;
            }
            Some(_) => skip_scalar(bytes)?,
        }
        if depth == 0 {
            return Ok(());
        }
    }
}

/// Reads past a number, `true`, `false` or `null`.
fn skip_scalar<R: Read>(bytes: &mut Bytes<R>) -> Result<(), JsonStreamError> {
    let mut taken = 0usize;
    while let Some(byte) = bytes.peek()? {
        if !(byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.')) {
            break;
        }
        bytes.consume(1);
        taken += 1;
    }
    if taken == 0 {
        return Err(bytes.malformed("a value was expected"));
    }
    Ok(())
}

/// Reads the JSON object `reader` gives, to its end, and says where the value of each member
/// named in `names` begins (its opening quote, counted from the reader's first byte) when that
/// value is a string: None for a member that is missing or not a string. A name given twice
/// counts as its last value (as a parser into a map reads it).
pub fn string_members(
    reader: impl Read,
    names: &[&str],
) -> Result<Vec<Option<u64>>, JsonStreamError> {
    let mut bytes = Bytes::new(reader);
    let mut found = vec![None; names.len()];
    bytes.expect(b'{', "a JSON object was expected")?;
    if bytes.skip_whitespace()? == Some(b'}') {
        bytes.consume(1);
    } else {
        loop {
            bytes.expect(b'"', "a member name was expected")?;
            let mut name = Vec::new();
            let whole = bytes.string(&mut name, MAX_NAME)?;
            bytes.expect(b':', "a colon was expected after a member name")?;
            let first = bytes.skip_whitespace()?;
            let at = bytes.offset();
            skip_value(&mut bytes)?;
            let asked = names.iter().position(|n| whole && n.as_bytes() == name);
            if let Some(index) = asked {
                found[index] = (first == Some(b'"')).then_some(at);
            }
            match bytes.skip_whitespace()? {
                Some(b',') => bytes.consume(1),
                Some(b'}') => {
                    bytes.consume(1);
                    break;
                }
                _ => return Err(bytes.malformed("a comma or the object's end was expected")),
            }
        }
    }
    if bytes.skip_whitespace()?.is_some() {
        return Err(bytes.malformed("something follows the object"));
    }
    Ok(found)
}

/// One JSON string of a reader, decoded a piece at a time.
pub struct StringReader<R> {
    bytes: Bytes<R>,
    decoder: Decoder,
    ended: bool,
}

impl<R: Read> StringReader<R> {
    /// The string whose opening quote is the reader's first byte (see [`string_members`]).
    pub fn new(reader: R) -> Result<Self, JsonStreamError> {
        let mut bytes = Bytes::new(reader);
        if bytes.next()? != Some(b'"') {
            return Err(bytes.malformed("a string was expected"));
        }
        Ok(StringReader {
            bytes,
            decoder: Decoder::default(),
            ended: false,
        })
    }

    /// Appends the string's next decoded bytes to `out`, at least one unless the string ended,
    /// until it holds `up_to` bytes (or a few more: an escape's character) or the string ended;
    /// false once it ended. The bytes are what the string holds, UTF-8 when the document is
    /// ([`take_text`] reads them).
    pub fn read_into(&mut self, out: &mut Vec<u8>, up_to: usize) -> Result<bool, JsonStreamError> {
        if !self.ended {
            let up_to = up_to.max(out.len() + 1);
            self.ended = self.decoder.run(&mut self.bytes, out, up_to)?;
        }
        Ok(!self.ended)
    }
}

/// Moves the text at the start of `bytes` into `text`: bytes that are not UTF-8 become
/// U+FFFD, and a character cut short at their end stays in `bytes` for the bytes that follow
/// it, unless `ended`.
pub fn take_text(bytes: &mut Vec<u8>, ended: bool, text: &mut String) {
    let mut at = 0;
    while at < bytes.len() {
        match std::str::from_utf8(&bytes[at..]) {
            Ok(rest) => {
                text.push_str(rest);
                at = bytes.len();
            }
            Err(e) => {
                let valid = at + e.valid_up_to();
                if let Ok(good) = std::str::from_utf8(&bytes[at..valid]) {
                    text.push_str(good);
                }
                match e.error_len() {
                    Some(bad) => {
                        text.push('\u{FFFD}');
                        at = valid + bad;
                    }
                    None if ended => {
                        text.push('\u{FFFD}');
                        at = bytes.len();
                    }
                    None => {
                        at = valid;
                        break;
                    }
                }
            }
        }
    }
    bytes.drain(..at);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one member's string with `StringReader`, `piece` bytes at a time, through a reader
    /// that gives at most `step` bytes per read.
    fn decode(document: &[u8], name: &str, piece: usize, step: usize) -> Option<String> {
        let found = string_members(Trickle(document, step), &[name]).expect("JSON");
        let at = usize::try_from(found[0]?).expect("offset");
        let mut reader = StringReader::new(Trickle(&document[at..], step)).expect("a string");
        let (mut raw, mut text) = (Vec::new(), String::new());
        loop {
            let more = reader.read_into(&mut raw, piece).expect("decoded");
            assert!(
                raw.len() <= piece + 8,
                "{} bytes for a piece of {piece}",
                raw.len()
            );
            take_text(&mut raw, !more, &mut text);
            if !more {
                return Some(text);
            }
        }
    }

    /// A reader giving at most its step of bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn strings_decode_as_serde_json_reads_them_whatever_the_pieces() {
        let stdout: String = (0..3000)
            .map(|i| format!("line {i} \"q\" \\ \t \u{1} é ✓ 🦀 {}\n", "x".repeat(i % 50)))
            .collect();
        let logs = serde_json::json!({"stdout": stdout, "stderr": "err", "other": [1, {"a": "}"}]});
        let document = serde_json::to_vec(&logs).expect("serialized");
        for (piece, step) in [(1, 1), (7, 3), (4096, 5000), (32 * 1024, 1 << 20)] {
            let got = decode(&document, "stdout", piece, step);
            assert_eq!(got.as_deref(), Some(stdout.as_str()), "pieces of {piece}");
        }
        assert_eq!(decode(&document, "stderr", 3, 2).as_deref(), Some("err"));
        assert_eq!(decode(&document, "missing", 3, 2), None);
        assert_eq!(decode(&document, "other", 3, 2), None, "not a string");
    }

    #[test]
    fn escapes_and_surrogates_are_undone() {
        let document = br#"{"s": "a\u00e9\ud83e\udd80\n\/\"\\\ud800x\udc00"}"#;
        let got = decode(document, "s", 2, 1);
        assert_eq!(got.as_deref(), Some("aé🦀\n/\"\\\u{FFFD}x\u{FFFD}"));
    }

    #[test]
    fn the_last_of_a_repeated_member_counts_and_a_long_name_is_not_taken() {
        let long = "n".repeat(MAX_NAME + 1);
        let document = format!(r#"{{"a": "one", "a": "two", "{long}": "x", "b": null}}"#);
        let found = string_members(document.as_bytes(), &["a", &long, "b"]).expect("JSON");
        let at = usize::try_from(found[0].expect("a")).expect("offset");
        assert_eq!(&document[at..at + 5], "\"two\"");
        assert_eq!(found[1..], [None, None]);
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"a\": \"unended}",
            b"{\"a\" \"b\"}",
            b"{\"a\": \"b\"} x",
            b"{\"a\": \"\\q\"}",
            b"{\"a\": }",
            b"{\"a\": [[[",
        ] {
            let read = string_members(bad, &["a"]);
            assert!(
                matches!(read, Err(JsonStreamError::Malformed { .. })),
                "{:?}: {read:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(string_members(&b" { } "[..], &["a"]).ok(), Some(vec![None]));
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut bytes = b"ok \xff then \xe2\x9c".to_vec();
        let mut text = String::new();
        take_text(&mut bytes, false, &mut text);
        assert_eq!(text, "ok \u{FFFD} then ");
        assert_eq!(bytes, b"\xe2\x9c", "a character cut short waits");
        bytes.push(0x93);
        take_text(&mut bytes, false, &mut text);
        assert_eq!(text, "ok \u{FFFD} then ✓");
        bytes.extend_from_slice(b"\xe2");
        take_text(&mut bytes, true, &mut text);
        assert!(text.ends_with("✓\u{FFFD}") && bytes.is_empty());
    }
}
