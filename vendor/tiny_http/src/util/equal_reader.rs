use std::io::Read;
use std::io::Result as IoResult;

use super::BodyEnd;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF and marks its `BodyEnd`. Patched: bytes left unread
/// when it is dropped stay unread (0.12.0 read and dropped them there, up to the whole declared
/// length on the answering thread); a request answered before its body's end closes its
/// connection instead (`Request::respond`).
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    end: BodyEnd,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize, end: BodyEnd) -> EqualReader<R> {
        if size == 0 {
            end.mark();
        }
        EqualReader { reader, size, end }
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        let len = self.reader.read(buf)?;
        self.size -= len;
        if self.size == 0 {
            self.end.mark();
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::{BodyEnd, EqualReader};
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let end = BodyEnd::new(false);
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5, end.clone());

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
            assert!(end.reached());
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let end = BodyEnd::new(false);
            let mut equal_reader = EqualReader::new(org_reader.by_ref(), 5, end.clone());

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
            assert!(!end.reached());
        }

        // Patched: what was not read stays unread.
        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, "ello world");
    }
}
