//! `https://` workers: ureq 2's TLS hook filled with rustls 0.23 (ureq's own `tls` feature would
//! bring a second root store; this one trusts what `--worker-ca` or the system gives), and a
//! handshake that reads the certificate chain a worker's endpoint presents.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use ureq::ReadWrite;

use crate::base::sync::lock;

/// Opens TLS sessions to workers with a rustls client configuration, which a reload may set
/// or replace (sessions already open keep theirs).
pub struct Connector(Mutex<Option<Arc<ClientConfig>>>);

impl Connector {
    /// Opens sessions with `config`; without one, every session is refused until
    /// [`Connector::replace`] gives one.
    pub fn new(config: Option<Arc<ClientConfig>>) -> Self {
        Connector(Mutex::new(config))
    }

    /// Opens the sessions from now on with `config`.
    pub fn replace(&self, config: Arc<ClientConfig>) {
        *lock(&self.0) = Some(config);
    }

    /// The settings sessions open with now.
    fn config(&self) -> io::Result<Arc<ClientConfig>> {
        lock(&self.0).clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no TLS settings for https:// workers yet (they are read at start, on SIGHUP and on POST /reload)",
            )
        })
    }

    /// The certificate chain (DER, leaf first) the server at the other end of `tcp` presents
    /// as `dns_name`, read in a handshake of its own: no earlier session is resumed (a resumed
    /// one shows no certificate), and the chain is recorded whether or not it is trusted (trust
    /// is the health probe's question; this sends no request). The handshake is completed when
    /// the server lets it, so that its log shows no failure; it gives up at `deadline`.
    pub fn presented_chain(
        &self,
        dns_name: &str,
        tcp: &mut TcpStream,
        deadline: Instant,
    ) -> io::Result<Vec<Vec<u8>>> {
        let name = server_name(dns_name)?;
        let config = self.config()?;
        let recorder = Arc::new(ChainRecorder {
            chain: Mutex::new(Vec::new()),
            algorithms: config.crypto_provider().signature_verification_algorithms,
        });
        let mut own = (*config).clone();
        own.dangerous()
            .set_certificate_verifier(Arc::clone(&recorder) as Arc<dyn ServerCertVerifier>);
        own.resumption = Resumption::disabled();
        let mut session = ClientConnection::new(Arc::new(own), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let ended = handshake_by(&mut session, tcp, deadline);
        let chain = std::mem::take(&mut *lock(&recorder.chain));
        match ended {
            _ if !chain.is_empty() => Ok(chain),
            Err(e) => Err(e),
            Ok(()) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server presented no certificate",
            )),
        }
    }
}

/// Drives the handshake of `session` over `tcp` one read at a time, each waiting no later than
/// `deadline` (however a server trickles its bytes), then sends a close_notify.
fn handshake_by(
    session: &mut ClientConnection,
    tcp: &mut TcpStream,
    deadline: Instant,
) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake did not end in time",
            ));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        if !session.is_handshaking() {
            session.send_close_notify();
        }
        while session.wants_write() {
            if session.write_tls(tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        if !session.is_handshaking() {
            return Ok(());
        }
        if !session.wants_read() || session.read_tls(tcp)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Err(e) = session.process_new_packets() {
            // The alert rustls queued for it, if it can go.
            let _ = session.write_tls(tcp);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// `dns_name` (a host name or an IP address, bracketed or not) as a TLS server name.
fn server_name(dns_name: &str) -> io::Result<ServerName<'static>> {
    let host = dns_name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{dns_name:?} is no TLS server name: {e}"),
        )
    })
}

impl ureq::TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        io: Box<dyn ReadWrite>,
    ) -> Result<Box<dyn ReadWrite>, ureq::Error> {
        let name = server_name(dns_name)?;
        let session = ClientConnection::new(self.config()?, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Box::new(TlsStream(StreamOwned::new(session, io))))
    }
}

/// The verifier of a certificate check's handshake: it keeps the chain the server presents,
/// trusted or not, and checks the handshake's signatures as any client would.
#[derive(Debug)]
struct ChainRecorder {
    /// The chain presented (DER, leaf first).
    chain: Mutex<Vec<Vec<u8>>>,
    /// The signature algorithms of the settings in use.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *lock(&self.chain) = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.to_vec())
            .collect();
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One TLS session over a worker connection.
struct TlsStream(StreamOwned<ClientConnection, Box<dyn ReadWrite>>);

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsStream({:?})", self.0.sock)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ReadWrite for TlsStream {
    /// The TCP socket under TLS, so ureq's timeouts apply to it.
    fn socket(&self) -> Option<&TcpStream> {
        self.0.sock.socket()
    }
}
