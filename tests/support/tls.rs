//! TLS for the tests: certificates made on the spot (a CA, server and client certificates), an
//! HTTPS client for the coordinator's listener, and a TLS proxy in front of a fake worker (the
//! setup README describes for sandrun), optionally demanding a client certificate.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Timeout of every test-side TLS socket.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA that signs certificates into PEM files of a directory.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    dir: PathBuf,
}

impl TestCa {
    /// A new CA whose certificate is `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write the CA");
        TestCa {
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// Its certificate file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Signs a certificate for 127.0.0.1 and localhost (server or client use), written to
    /// `<dir>/<name>.crt` and `<dir>/<name>.key`; returns (certificate, key) paths.
    pub fn issue(&self, name: &str, client: bool) -> (PathBuf, PathBuf) {
        self.issue_until(name, client, None)
    }

    /// As [`TestCa::issue`], valid until midnight (UTC) of `until` (year, month, day) when
    /// given (rcgen's far future otherwise).
    pub fn issue_until(
        &self,
        name: &str,
        client: bool,
        until: Option<(i32, u8, u8)>,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some((year, month, day)) = until {
            params.not_after = rcgen::date_time_ymd(year, month, day);
        }
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        fs::write(&cert_path, cert.pem()).expect("write the certificate");
        fs::write(&key_path, key.serialize_pem()).expect("write the key");
        (cert_path, key_path)
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates")
}

fn roots(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca) {
        roots.add(cert).expect("CA certificate");
    }
    roots
}

/// The UTC date `days` from now, as (year, month, day) and as `YYYY-MM-DD`.
pub fn days_from_now(days: u32) -> ((i32, u8, u8), String) {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("+{days} days"), "+%F"])
        .output()
        .expect("date");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<u32> = text.split('-').filter_map(|p| p.parse().ok()).collect();
    let [year, month, day] = parts[..] else {
        panic!("date printed {text:?}");
    };
    ((year as i32, month as u8, day as u8), text)
}

/// What an HTTPS request to 127.0.0.1 got.
pub struct HttpsAnswer {
    /// Status code.
    pub status: u16,
    /// The whole answer as text.
    pub text: String,
    /// The server's certificate.
    pub server_cert: Vec<u8>,
}

/// `GET path` over TLS to 127.0.0.1:`port`, trusting only `ca`; Err when TLS or HTTP failed.
pub fn https_get(port: u16, ca: &Path, path: &str) -> Result<HttpsAnswer, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    https_get_over(tcp, ca, path)
}

/// `GET path` over TLS on the connection `tcp` (to a server named 127.0.0.1), trusting only
/// `ca`; Err when TLS or HTTP failed.
pub fn https_get_over(tcp: TcpStream, ca: &Path, path: &str) -> Result<HttpsAnswer, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let session = rustls::ClientConnection::new(Arc::new(config), name.to_owned())
        .map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("TLS write: {e}"))?;
    let mut answer = Vec::new();
    if let Err(e) = tls.read_to_end(&mut answer) {
        if answer.is_empty() {
            return Err(format!("TLS read: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let server_cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok(HttpsAnswer {
        status,
        text,
        server_cert,
    })
}

/// The DER of the first certificate of a PEM file.
pub fn cert_der(path: &Path) -> Vec<u8> {
    certs(path).first().map(|c| c.to_vec()).unwrap_or_default()
}

/// A TLS proxy on 127.0.0.1 in front of a plain-HTTP backend (sandrun's dialect: one request
/// per connection, bodies with `Content-Length`).
pub struct TlsProxy {
    addr: SocketAddr,
    sessions: Arc<AtomicUsize>,
    /// What new connections are served with.
    config: Arc<Mutex<Arc<ServerConfig>>>,
    client_ca: Option<PathBuf>,
    /// The path prefix it serves under (`/sandrun`), taken off each request's target.
    prefix: String,
}

/// A proxy's settings: this certificate, and client certificates signed by `client_ca`
/// demanded when given.
fn proxy_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)), provider())
                .build()
                .expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(key).expect("proxy key");
    Arc::new(builder.with_single_cert(certs(cert), key).expect("proxy"))
}

impl TlsProxy {
    /// Starts one with this certificate, demanding a client certificate signed by `client_ca`
    /// when given.
    pub fn start(backend: SocketAddr, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        Self::start_under(backend, cert, key, client_ca, "")
    }

    /// As [`TlsProxy::start`], serving the backend under the path `prefix` (`/sandrun`): a
    /// request for `{prefix}/health` reaches the backend as `/health`.
    pub fn start_under(
        backend: SocketAddr,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        prefix: &str,
    ) -> Self {
        let config = Arc::new(Mutex::new(proxy_config(cert, key, client_ca)));
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind");
        let addr = listener.local_addr().expect("address");
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sessions);
        let serving = Arc::clone(&config);
        let under = prefix.to_string();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let config = Arc::clone(&serving.lock().unwrap_or_else(|e| e.into_inner()));
                let counted = Arc::clone(&counted);
                let under = under.clone();
                thread::spawn(move || {
                    if proxy_one(client, config, backend, &under).is_ok() {
                        counted.fetch_add(1, Ordering::AcqRel);
                    }
                });
            }
        });
        TlsProxy {
            addr,
            sessions,
            config,
            client_ca: client_ca.map(Path::to_path_buf),
            prefix: prefix.to_string(),
        }
    }

    /// Serves new connections with this certificate (a renewal).
    pub fn present(&self, cert: &Path, key: &Path) {
        let config = proxy_config(cert, key, self.client_ca.as_deref());
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// `https://127.0.0.1:PORT` and its path prefix.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}{}", self.addr.port(), self.prefix)
    }

    /// Requests passed to the backend so far.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }
}

/// One TLS connection: its request to the backend, the backend's answer back.
fn proxy_one(
    client: TcpStream,
    config: Arc<ServerConfig>,
    backend: SocketAddr,
    prefix: &str,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    let session = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(session, client);
    let mut reader = BufReader::new(&mut tls);
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let text = String::from_utf8_lossy(&line).to_string();
        if let Some(value) = text.strip_prefix("Content-Length: ") {
            length = value.trim().parse().unwrap_or(0);
        }
        if head.is_empty() {
            let Some(inside) = without_prefix(&line, prefix) else {
                // Outside its prefix, as a proxy serving a path would answer.
                drop(reader);
                tls.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                tls.flush()?;
                return Err(std::io::ErrorKind::NotFound.into());
            };
            line = inside;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut upstream = TcpStream::connect(backend)?;
    upstream.write_all(&head)?;
    upstream.write_all(&body)?;
    relay(&mut tls, &mut upstream)?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

/// A request line with `prefix` taken off the start of its target; `None` when its target is
/// outside the prefix.
fn without_prefix(line: &[u8], prefix: &str) -> Option<Vec<u8>> {
    if prefix.is_empty() {
        return Some(line.to_vec());
    }
    let text = String::from_utf8_lossy(line);
    let (method, rest) = text.split_once(' ')?;
    let target = rest.strip_prefix(prefix).filter(|t| t.starts_with('/'))?;
    Some(format!("{method} {target}").into_bytes())
}

/// Passes bytes both ways until the backend ends its answer or the client goes (a WebSocket
/// stays open until one of them closes it), for at most `IO_TIMEOUT` of silence.
fn relay(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    upstream: &mut TcpStream,
) -> std::io::Result<()> {
    let turn = Duration::from_millis(20);
    upstream.set_read_timeout(Some(turn))?;
    tls.sock.set_read_timeout(Some(turn))?;
    let waiting = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut buf = [0u8; 16 * 1024];
    let mut heard = std::time::Instant::now();
    while heard.elapsed() < IO_TIMEOUT {
        match upstream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                tls.write_all(&buf[..n])?;
                tls.flush()?;
                heard = std::time::Instant::now();
            }
            Err(e) if waiting(&e) => {}
            Err(e) => return Err(e),
        }
        match tls.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                upstream.write_all(&buf[..n])?;
                heard = std::time::Instant::now();
            }
            Err(e) if waiting(&e) => {}
            Err(_) => return Ok(()),
        }
    }
    Err(std::io::ErrorKind::TimedOut.into())
}

/// A TLS endpoint gone wrong: every connection gets the header of a large handshake record,
/// then one byte of it every 100 ms (for two minutes at most), never a whole message.
pub struct TricklingTls {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl TricklingTls {
    /// Starts one on 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind");
        let addr = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::AcqRel);
                thread::spawn(move || {
                    // A handshake record of 16,000 bytes: ServerHello, then the trickle.
                    if client
                        .write_all(&[0x16, 0x03, 0x03, 0x3e, 0x80, 0x02])
                        .is_err()
                    {
                        return;
                    }
                    for _ in 0..1200 {
                        thread::sleep(Duration::from_millis(100));
                        if client.write_all(&[0]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TricklingTls { addr, connections }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}
