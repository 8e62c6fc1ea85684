//! Side listeners (health, metrics, admin): bind, serve in the background until shutdown.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Binds `addr` and serves `app` on a background task until `stop` is cancelled. Returns the bound
/// address (port 0 picks a free one); a bind failure is returned, not logged.
pub async fn serve_in_background(
    addr: SocketAddr,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(bound)
}
