//! The first piece of an output streamed from its worker, read before the answer's status line
//! goes out. The HTTP server holds an answer's status line and headers in its 4 KiB write
//! buffer until body bytes push them out, so a worker's answer that broke off within its first
//! bytes left the client with no status line at all (curl: `Empty reply from server`). Once the
//! first piece came, the rest streams as it comes, and a break past it shows as a cut body.

use std::io::{self, Cursor, Read};

/// The most bytes read from a worker before answering: more than the server's write buffer
/// (4 KiB), so the status line is out before the worker is read again. One such buffer is
/// held per file streamed from a worker (`--threads` of them at most).
pub const FIRST_PIECE: usize = 16 * 1024;

/// A worker's answer that broke off within its first piece.
#[derive(Debug)]
pub struct BrokeOff {
    /// The bytes that came before it broke off.
    pub got: usize,
    /// Why it broke off.
    pub error: io::Error,
}

/// Reads the first piece of `body` (up to [`FIRST_PIECE`] bytes; its whole when `length`, the
/// body's length when known, is no larger), each read bounded by the body's own timeouts.
/// Returns the body to stream, those bytes first; or how it broke off, when it failed or
/// ended short of `length` within them.
pub fn read_first_piece(
    mut body: Box<dyn Read + Send>,
    length: Option<u64>,
) -> Result<Box<dyn Read + Send>, BrokeOff> {
    let want = length.map_or(FIRST_PIECE, |l| {
        usize::try_from(l).map_or(FIRST_PIECE, |l| l.min(FIRST_PIECE))
    });
    let mut piece = vec![0; want];
    let mut got = 0;
    while got < want {
        match body.read(&mut piece[got..]) {
            Ok(0) if length.is_some() => {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the worker closed the answer before its end",
                );
                return Err(BrokeOff { got, error });
            }
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(BrokeOff { got, error }),
        }
    }
    piece.truncate(got);
    Ok(Box::new(Cursor::new(piece).chain(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `bytes`, then fails.
    struct Failing(&'static [u8]);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "stalled"));
            }
            let n = self.0.read(buf)?;
            Ok(n)
        }
    }

    fn all(mut body: Box<dyn Read + Send>) -> Vec<u8> {
        let mut got = Vec::new();
        let read = body.read_to_end(&mut got);
        assert!(read.is_ok(), "{read:?}");
        got
    }

    #[test]
    fn a_break_within_the_first_piece_is_told_and_a_later_one_streams() {
        let broke = read_first_piece(Box::new(Failing(b"0123456789")), Some(20));
        let broke = broke.err().map(|b| (b.got, b.error.kind()));
        assert_eq!(broke, Some((10, io::ErrorKind::TimedOut)));
        let short = read_first_piece(Box::new(&b"0123"[..]), Some(8));
        let short = short.err().map(|b| (b.got, b.error.kind()));
        assert_eq!(short, Some((4, io::ErrorKind::UnexpectedEof)));
        // Without a length, an early end is the end.
        let whole = read_first_piece(Box::new(&b"0123"[..]), None).map(all);
        assert_eq!(whole.ok(), Some(b"0123".to_vec()));
        // A break past the first piece is met while streaming.
        static LONG: [u8; FIRST_PIECE + 10] = [7; FIRST_PIECE + 10];
        let started = read_first_piece(Box::new(Failing(&LONG)), Some(2 * LONG.len() as u64));
        let mut body = started.unwrap_or_else(|b| panic!("{b:?}"));
        let mut got = Vec::new();
        assert!(body.read_to_end(&mut got).is_err());
        assert_eq!(got.len(), LONG.len());
    }
}
