//! Side listeners (health, metrics, admin): bind, serve in the background until shutdown.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Side listeners answer small requests: a client gets this long to send its headers.
const SIDE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Side listeners serve a few scrapers and probes.
const SIDE_MAX_CONNECTIONS: usize = 256;
/// Open requests get this long to finish at shutdown.
const SIDE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds `addr` and serves `app` on a background task until `stop` is cancelled. Returns the bound
/// address (port 0 picks a free one); a bind failure is returned, not logged.
pub async fn serve_in_background(
    addr: SocketAddr,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(crate::serve::serve(
        listener,
        app,
        None,
        crate::serve::ConnLimits {
            header_timeout: SIDE_HEADER_TIMEOUT,
            max_connections: SIDE_MAX_CONNECTIONS,
        },
        stop,
        SIDE_GRACE,
    ));
    Ok(bound)
}
