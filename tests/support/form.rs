//! multipart/form-data bodies for tests, good and bad.

/// A multipart/form-data body under construction.
#[derive(Clone, Debug)]
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Form {
        Form::new()
    }
}

impl Form {
    /// An empty form with a fixed boundary.
    pub fn new() -> Form {
        Form {
            boundary: "----trustedpooltestboundary7MA4YWxkTrZu0gW".to_string(),
            body: Vec::new(),
        }
    }

    /// An empty form with another boundary (a client draws one for every request).
    pub fn with_boundary(boundary: &str) -> Form {
        Form {
            boundary: boundary.to_string(),
            body: Vec::new(),
        }
    }

    /// Adds a `files` part with a filename and Content-Type.
    pub fn file(self, filename: &str, content_type: &str, bytes: &[u8]) -> Form {
        let headers = format!(
            "Content-Disposition: form-data; name=\"files\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}"
        );
        self.raw_part(&headers, bytes)
    }

    /// Adds the `manifest` part.
    pub fn manifest(self, json: &str) -> Form {
        self.field("manifest", json.as_bytes())
    }

    /// Adds a plain field part.
    pub fn field(self, name: &str, bytes: &[u8]) -> Form {
        self.raw_part(
            &format!("Content-Disposition: form-data; name=\"{name}\""),
            bytes,
        )
    }

    /// Adds a part with these header lines (CRLF-separated, no trailing blank line) verbatim.
    pub fn raw_part(mut self, headers: &str, bytes: &[u8]) -> Form {
        self.body
            .extend_from_slice(format!("--{}\r\n{headers}\r\n\r\n", self.boundary).as_bytes());
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// The request's Content-Type value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The whole body, closing boundary included.
    pub fn body(&self) -> Vec<u8> {
        let mut body = self.body.clone();
        body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        body
    }
}
