//! JSON as sandrun writes it, read back to the bytes it meant. sandrun's `json_escape` tests
//! `c < 32` on a C++ `char`, which is signed on x86: every byte at or above 0x80 is written as a
//! `\u00xx` escape, so a file named `é.txt` (UTF-8 `c3 a9`) is listed as `"\u00c3\u00a9.txt"`,
//! which a JSON parser reads as `Ã©.txt`. Where `char` is unsigned (arm64) the bytes pass raw.
//! Both read back to `é.txt` here. sandrun writes no other `\u` escape above `\u001f`, so every
//! `\u0080`..`\u00ff` it sends is one byte.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// Parses a worker's JSON answer, each `\u0080`..`\u00ff` escape taken as the byte it names.
/// Bytes that then do not form UTF-8 (a file name or output in another encoding) are replaced
/// by U+FFFD.
pub fn parse(body: &[u8]) -> serde_json::Result<Value> {
    let bytes = byte_escapes_undone(body);
    match std::str::from_utf8(&bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(&bytes)),
    }
}

/// [`parse`] for an answer that must be a JSON object, keeping only its members named in `keys`:
/// the others are skipped unread, so what a worker adds that the coordinator does not read
/// (a huge array, say) costs no memory beyond its bytes, and is not kept.
pub fn parse_object(body: &[u8], keys: &[&str]) -> serde_json::Result<Value> {
    let bytes = byte_escapes_undone(body);
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    };
    let mut reader = serde_json::Deserializer::from_str(&text);
    let value = Members(keys).deserialize(&mut reader)?;
    reader.end()?;
    Ok(value)
}

/// Reads a JSON object, keeping the members named in its list.
struct Members<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<Value, D::Error> {
        reader.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(name) = members.next_key::<Cow<'de, str>>()? {
            if self.0.contains(&name.as_ref()) {
                kept.insert(name.into_owned(), members.next_value::<Value>()?);
            } else {
                members.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(kept))
    }
}

/// `body` with every `\u0080`..`\u00ff` escape replaced by its byte; other escapes kept.
fn byte_escapes_undone(body: &[u8]) -> Cow<'_, [u8]> {
    if !body.windows(4).any(|w| w == b"\\u00") {
        return Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        if byte != b'\\' {
            out.push(byte);
            at += 1;
            continue;
        }
        match escaped_byte(&body[at..]) {
            Some(meant) => {
                out.push(meant);
                at += 6;
            }
            None => {
                // Any other escape, `\\` included, is kept whole so its second byte is not
                // read as the start of one.
                let end = (at + 2).min(body.len());
                out.extend_from_slice(&body[at..end]);
                at = end;
            }
        }
    }
    Cow::Owned(out)
}

/// The byte of a `\u00xx` escape at the start of `text`, when `xx` is 80 or more.
fn escaped_byte(text: &[u8]) -> Option<u8> {
    let digits = text.strip_prefix(b"\\u00")?.get(..2)?;
    let byte = u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
    (byte >= 0x80).then_some(byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdout(body: &[u8]) -> String {
        let value = parse(body).unwrap_or_default();
        value["stdout"].as_str().unwrap_or("(none)").to_string()
    }

    #[test]
    fn an_object_keeps_the_members_asked_for_only() {
        let body = br#"{"status":"completed","pad":[0,0,[{"a":1}],"x"],"job_id":"j\u00c3\u00a9"}"#;
        let kept = parse_object(body, &["status", "job_id"]).unwrap_or_default();
        assert_eq!(
            kept,
            serde_json::json!({"status": "completed", "job_id": "j\u{e9}"})
        );
        assert!(parse_object(b"[1,2]", &["status"]).is_err(), "no object");
        assert!(
            parse_object(br#"{"status":1} x"#, &["status"]).is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn reads_both_ways_sandrun_writes_non_ascii_bytes() {
        // x86: each byte escaped; arm64: the bytes raw.
        assert_eq!(
            stdout(br#"{"stdout":"h\u00c3\u00a9llo \u00e2\u009c\u0093"}"#),
            "héllo ✓"
        );
        assert_eq!(stdout("{\"stdout\":\"héllo ✓\"}".as_bytes()), "héllo ✓");
    }

    #[test]
    fn keeps_other_escapes_and_an_escaped_backslash() {
        assert_eq!(
            stdout(br#"{"stdout":"a\\u00e9\n\t\u0001\"q\""}"#),
            "a\\u00e9\n\t\u{1}\"q\""
        );
        assert_eq!(stdout(br#"{"stdout":"\\\u00c3\u00a9"}"#), "\\é");
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        assert_eq!(stdout(br#"{"stdout":"caf\u00e9!"}"#), "caf\u{fffd}!");
        assert_eq!(stdout(b"{\"stdout\":\"caf\xe9!\"}"), "caf\u{fffd}!");
    }

    #[test]
    fn a_cut_escape_is_an_error_not_a_panic() {
        for body in [&b"{\"a\":\"\\u00c"[..], b"{\"a\":\"\\", b"\\u00", b""] {
            assert!(parse(body).is_err(), "{body:?}");
        }
    }
}
