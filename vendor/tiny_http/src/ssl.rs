//! TLS for the listener (patched: rustls 0.23 only; the OpenSSL and rustls 0.20 glue is gone).

#[cfg(feature = "ssl-rustls")]
pub(crate) mod rustls;
#[cfg(feature = "ssl-rustls")]
pub(crate) use self::rustls::RustlsStream as SslStream;
#[cfg(feature = "ssl-rustls")]
pub use self::rustls::TlsAcceptor;
