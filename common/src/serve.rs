//! The listener loop of every Hexpulse HTTP service: HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN
//! under TLS) on one port, with optional rustls, the peer address as `ConnectInfo<SocketAddr>` for
//! per-client limits, and graceful shutdown.
//!
//! Connections are bounded, so that silent or slow sockets cannot hold file descriptors the rest
//! of the process needs (a processor in the same process flushes files):
//! - at most `max_connections` per listener; past it a new connection is closed at once;
//! - a connection whose first byte (or TLS handshake) does not arrive within the header timeout is
//!   closed, as is one that makes no progress, reading or writing, for twice that ([`Idle`]);
//! - HTTP/1 headers must arrive within the header timeout (slowloris).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// TLS: the certificate chain and private key, PEM files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_pem: std::path::PathBuf,
    pub key_pem: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// The ALPN protocols of an HTTP listener ([`serve`]): HTTP/2, then HTTP/1.1.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Builds a rustls acceptor from PEM files, offering `alpn` ([`HTTP_ALPN`] for [`serve`]; a client
/// that names no protocol is served all the same).
pub fn tls_acceptor(cfg: &TlsConfig, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let certs = rustls_pemfile::certs(&mut read(&cfg.cert_pem)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(format!("certificates: {e}")))?;
    let key = rustls_pemfile::private_key(&mut read(&cfg.key_pem)?.as_slice())
        .map_err(|e| TlsError::Config(format!("private key: {e}")))?
        .ok_or_else(|| TlsError::Config("no private key in key_pem".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A stream that fails with `TimedOut` when it makes no progress: its first byte must arrive within
/// `first`, and then no read or write may wait longer than `idle`.
pub struct Idle<S> {
    inner: S,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    pub fn new(inner: S, first: Duration, idle: Duration) -> Idle<S> {
        Idle {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(first)),
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.sleep.as_mut().reset(next);
    }

    /// A write's outcome: bytes written are progress; a write that waits is checked for a stall.
    fn wrote(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.stalled(cx),
        }
    }

    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection made no progress",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.stalled(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The most an HTTP/1 connection reads ahead of its handler. hyper reads a request body's next chunk
/// as soon as the connection is polled, before the handler asks for it, in a buffer that grows to its
/// limit (about 400 KiB by default). Memory so grew with the connections open, past every in-flight
/// budget: 150 uploads of 1 MiB, refused with 429 by an 8 MiB budget, still took 44–50 MiB (glibc)
/// or 75–96 MiB (mimalloc), most of it hyper's read buffers (heaptrack). At 16 KiB a connection holds
/// at most its buffer and one chunk: 32 MiB per thousand connections. Headers must fit in it too.
const HTTP1_READ_BUF_MAX: usize = 16 << 10;

/// The default of `max_connections` of the device and query listeners.
pub fn default_max_connections() -> usize {
    4096
}

/// Limits of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to the first byte (or through the TLS handshake), and to a request's complete headers.
    pub header_timeout: Duration,
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let header_timeout = limits.header_timeout;
    let idle = header_timeout * 2;
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HTTP1_READ_BUF_MAX);
    // No HTTP/2 keep-alive pings: their answers would keep an idle connection alive past `idle`.
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("hexpulse_connections_refused_total").increment(1);
            tracing::debug!(%peer, max = limits.max_connections, "too many connections; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = Idle::new(stream, header_timeout, idle);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let stream =
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown limit; closing them"
        );
    }
}

/// Raises this process's soft limit of open files to its hard limit (services hold a descriptor per
/// connection, processors one per file they write). Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
