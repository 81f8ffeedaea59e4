//! `https://` workers: ureq 2's TLS hook filled with rustls 0.23 (ureq's own `tls` feature would
//! bring a second root store; this one trusts what `--worker-ca` or the system gives), and a
//! handshake that reads the certificate chain a worker's endpoint presents.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq::ReadWrite;

use crate::base::sync::lock;
use crate::worker::bound_request::read_no_later_than;

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
        tcp: TcpStream,
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
        let session = ClientConnection::new(Arc::new(own), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut stream = TlsStream { session, io: tcp };
        let ended = stream
            .handshake(Some(deadline))
            .and_then(|()| stream.close());
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
        Ok(Box::new(TlsStream { session, io }))
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

/// One TLS session over a worker connection. Each call reads the socket one piece at a time
/// and gives up once the socket's read timeout (what ureq left the request, or the caller's
/// timeout), counted from the call's start, has passed: rustls's own loop would wait a whole
/// timeout per piece, so a server that trickles a byte now and then would hold the call (and a
/// health round with it) far past its time.
struct TlsStream<S: ReadWrite> {
    session: ClientConnection,
    io: S,
}

impl<S: ReadWrite> TlsStream<S> {
    /// The socket's read timeout now (`None`: it has none, or there is no socket).
    fn timeout(&self) -> Option<Duration> {
        self.io
            .socket()
            .and_then(|s| s.read_timeout().ok().flatten())
    }

    /// Runs `call` with reads that end by the socket's timeout from now, then gives the socket
    /// its timeout back (ureq counts the next call's time from it).
    fn bounded<T>(
        &mut self,
        call: impl FnOnce(&mut Self, Option<Instant>) -> io::Result<T>,
    ) -> io::Result<T> {
        let timeout = self.timeout();
        let result = call(self, timeout.map(|t| Instant::now() + t));
        if let Some(socket) = self.io.socket() {
            let _ = socket.set_read_timeout(timeout);
        }
        result
    }

    /// Reads the socket once, waiting no later than `deadline`, and takes in its records.
    fn read_more(&mut self, deadline: Option<Instant>) -> io::Result<usize> {
        if let (Some(deadline), Some(socket)) = (deadline, self.io.socket()) {
            read_no_later_than(socket, deadline, "the worker's TLS data")?;
        }
        let read = self.session.read_tls(&mut self.io)?;
        if let Err(e) = self.session.process_new_packets() {
            // The alert rustls queued for it, if it can go.
            let _ = self.session.write_tls(&mut self.io);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(read)
    }

    /// Sends every TLS record waiting to go.
    fn send_pending(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            if self.session.write_tls(&mut self.io)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        self.io.flush()
    }

    /// Completes the handshake if it is not done yet, reading no later than `deadline`.
    fn handshake(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        loop {
            self.send_pending()?;
            if !self.session.is_handshaking() {
                return Ok(());
            }
            if self.read_more(deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the worker closed the connection during the TLS handshake",
                ));
            }
        }
    }

    /// Ends the session with a close_notify.
    fn close(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        self.send_pending()
    }
}

impl<S: ReadWrite> fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsStream({:?})", self.io.socket())
    }
}

impl<S: ReadWrite> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.bounded(|me, deadline| {
            me.handshake(deadline)?;
            loop {
                match me.session.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
                if me.read_more(deadline)? == 0 {
                    // The socket ended: what was decrypted, then the end (with or without a
                    // close_notify: bodies have their lengths, checked above this).
                    return match me.session.reader().read(buf) {
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof
                            ) =>
                        {
                            Ok(0)
                        }
                        done => done,
                    };
                }
            }
        })
    }
}

impl<S: ReadWrite> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bounded(|me, deadline| {
            me.handshake(deadline)?;
            let taken = me.session.writer().write(buf)?;
            me.send_pending()?;
            Ok(taken)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.bounded(|me, deadline| {
            me.handshake(deadline)?;
            me.session.writer().flush()?;
            me.send_pending()
        })
    }
}

impl<S: ReadWrite> ReadWrite for TlsStream<S> {
    /// The TCP socket under TLS, so ureq's timeouts apply to it.
    fn socket(&self) -> Option<&TcpStream> {
        self.io.socket()
    }
}
