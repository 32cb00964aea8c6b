//! The load generator: `requests` HTTP(S) requests from `workers` concurrent connections, each on a new
//! TCP connection (optionally a CONNECT tunnel through a proxy, then TLS), each reading the whole
//! response and the server's close. Prints one JSON [`LoadReport`] line.
//!
//! TLS: rustls with the `ring` provider and no session resumption, so every connection makes a full
//! handshake and sends a fresh ClientHello. The bed's certificate is self-signed with CA:TRUE, which
//! WebPKI refuses as an end-entity certificate; it is pinned instead (the handshake signature is
//! still verified with the certificate's key).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::stats::percentile;

/// Response heads longer than this are not from our nginx or squid.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "HTTP(S) requests on new connections, directly or through a CONNECT proxy"
)]
pub struct LoadArgs {
    /// Where to connect: the proxy (with --connect) or the origin.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Open an HTTP CONNECT tunnel to HOST:PORT first.
    #[arg(long)]
    pub connect: bool,
    /// The name in the CONNECT request, the SNI and the Host header.
    #[arg(long)]
    pub host: String,
    /// The port in the CONNECT request.
    #[arg(long, default_value_t = 443)]
    pub port: u16,
    /// Speak TLS (to the origin, inside the tunnel if any).
    #[arg(long)]
    pub tls: bool,
    /// The origin's certificate (PEM), pinned.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long, default_value = "/index.html")]
    pub path: String,
    #[arg(long)]
    pub requests: usize,
    #[arg(long)]
    pub workers: usize,
    /// Per-request limit, seconds.
    #[arg(long, default_value_t = 20)]
    pub timeout: u64,
}

/// What one load run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Completed requests per second.
    pub rate: f64,
    /// Latency of the completed requests (none when every request failed).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Response body bytes received.
    pub bytes: u64,
    /// The load generator's own CPU time (user + system), seconds.
    pub cpu_s: f64,
}

/// Accepts exactly one certificate; checks handshake signatures with its key.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
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

fn connector(cert: &std::path::Path) -> anyhow::Result<TlsConnector> {
    let pem = std::fs::read(cert).with_context(|| format!("read certificate {}", cert.display()))?;
    let cert = CertificateDer::from_pem_slice(&pem)
        .with_context(|| format!("no PEM certificate in {}", cert.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let verifier = PinnedCert { cert, algorithms: provider.signature_verification_algorithms };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // Every connection pays a full handshake, like a first visit.
    config.resumption = Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Reads up to the end of a head (`\r\n\r\n`); returns the head and the bytes read after it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.context("read response head")?;
        if n == 0 {
            bail!("connection closed before the response head ended ({} bytes)", buf.len());
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[searched_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = searched_from + at + 4;
            let rest = buf.split_off(end);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        ensure!(buf.len() <= MAX_HEAD, "response head longer than {MAX_HEAD} bytes");
    }
}

fn status(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1)?.parse().ok()
}

fn content_length(head: &str) -> Option<u64> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

/// Sends the request, reads the response body, then reads on to the server's close.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> anyhow::Result<u64> {
    stream.write_all(request).await.context("send request")?;
    stream.flush().await.context("send request")?;
    let (head, early) = read_head(&mut stream).await?;
    ensure!(status(&head) == Some(200), "response: {}", head.lines().next().unwrap_or_default());
    let length = content_length(&head).context("response has no Content-Length")?;
    let mut received = early.len() as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while received < length {
        let n = stream.read(&mut chunk).await.context("read response body")?;
        ensure!(n > 0, "connection closed after {received} of {length} body bytes");
        received += n as u64;
    }
    // The server closes (Connection: close); a missing TLS close_notify is not our concern here.
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
    }
    Ok(length)
}

struct Target {
    addr: SocketAddr,
    connect: Option<Vec<u8>>,
    server_name: ServerName<'static>,
    request: Vec<u8>,
    tls: Option<TlsConnector>,
}

async fn one_request(target: &Target) -> anyhow::Result<u64> {
    let mut tcp =
        TcpStream::connect(target.addr).await.with_context(|| format!("connect {}", target.addr))?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    if let Some(connect) = &target.connect {
        tcp.write_all(connect).await.context("send CONNECT")?;
        let (head, rest) = read_head(&mut tcp).await?;
        ensure!(status(&head) == Some(200), "CONNECT refused: {}", head.lines().next().unwrap_or_default());
        ensure!(rest.is_empty(), "the proxy sent bytes after its CONNECT reply");
    }
    match &target.tls {
        Some(tls) => {
            let stream = tls.connect(target.server_name.clone(), tcp).await.context("TLS handshake")?;
            exchange(stream, &target.request).await
        }
        None => exchange(tcp, &target.request).await,
    }
}

#[derive(Default)]
struct WorkerResult {
    latencies_ms: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    bytes: u64,
}

async fn worker(
    target: Arc<Target>,
    next: Arc<AtomicUsize>,
    requests: usize,
    limit: Duration,
) -> WorkerResult {
    let mut result = WorkerResult::default();
    while next.fetch_add(1, Ordering::Relaxed) < requests {
        let started = Instant::now();
        match tokio::time::timeout(limit, one_request(&target)).await {
            Ok(Ok(bytes)) => {
                result.latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
                result.bytes += bytes;
            }
            Ok(Err(e)) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| format!("no answer within {limit:?}"));
            }
        }
    }
    result
}

/// This process's CPU time (user + system), seconds.
fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF always exists.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs the load described by `args` on a single-threaded runtime (the machine is small: one core for
/// the client leaves the other to the proxy, the origin and the monitor).
pub fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    ensure!(args.workers > 0, "--workers must be at least 1");
    let tls = match (&args.cert, args.tls) {
        (Some(cert), true) => Some(connector(cert)?),
        (None, true) => bail!("--tls needs --cert"),
        (_, false) => None,
    };
    let target = Arc::new(Target {
        addr: args.addr,
        connect: args.connect.then(|| {
            format!("CONNECT {h}:{p} HTTP/1.1\r\nHost: {h}:{p}\r\nUser-Agent: monitor-bench\r\n\r\n", h = args.host, p = args.port)
                .into_bytes()
        }),
        server_name: ServerName::try_from(args.host.clone()).context("--host is not a server name")?,
        request: format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: monitor-bench\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            args.path, args.host
        )
        .into_bytes(),
        tls,
    });
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio")?;
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let limit = Duration::from_secs(args.timeout);
    let results: Vec<WorkerResult> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.workers)
            .map(|_| tokio::spawn(worker(target.clone(), next.clone(), args.requests, limit)))
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.unwrap_or_default());
        }
        results
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_s = own_cpu_seconds() - cpu_before;
    let mut latencies: Vec<f64> = results.iter().flat_map(|r| r.latencies_ms.iter().copied()).collect();
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len();
    Ok(LoadReport {
        requests: args.requests,
        ok,
        errors: results.iter().map(|r| r.errors).sum(),
        first_error: results.iter().find_map(|r| r.first_error.clone()),
        elapsed_s: elapsed,
        rate: ok as f64 / elapsed.max(1e-9),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        bytes: results.iter().map(|r| r.bytes).sum(),
        cpu_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read() {
        let head = "HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(status(head), Some(200));
        assert_eq!(content_length(head), Some(10));
        assert_eq!(status("HTTP/1.1 403 Forbidden\r\n\r\n"), Some(403));
        assert_eq!(content_length("HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[test]
    fn head_and_early_body_are_split() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let (head, rest) = runtime.block_on(read_head(&mut input)).expect("head");
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(rest, b"abc");
    }
}
