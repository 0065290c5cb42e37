//! The HTTP/1 server loop: accepts connections and drives each one with
//! hyper, with a header-read timeout, and shuts down in two stages.
//!
//! Why not `axum::serve`: it runs hyper without a timer, so a client that
//! sends half a request head and stalls holds its connection (and a graceful
//! shutdown) forever; and its graceful shutdown can only wait for every
//! connection, even one whose client stopped reading a stream.
//!
//! Timeouts: a connection must deliver a complete request head within
//! `header_timeout` of being opened, and of its previous response ending.
//! hyper starts that clock whenever the connection waits for a head, so the
//! same limit also closes idle keep-alive connections (clients reconnect
//! transparently, as they do with vLLM's 5 s keep-alive). A request whose head
//! has arrived is never timed out here: a long generation may legitimately
//! send nothing for minutes.
//!
//! Shutdown: when `graceful` resolves, the listener closes, idle connections
//! close at once, and connections with a request in flight close once it has
//! been answered; [`serve`] returns when no connection is left. Dropping the
//! future returned by [`serve`] instead closes nothing by itself: the caller
//! stops waiting, and the runtime's shutdown drops the connection tasks.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Connection limits of the HTTP layer.
#[derive(Clone, Copy, Debug)]
pub struct HttpOptions {
    /// Longest wait for a complete request head (from connect, or from the previous response).
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `graceful` resolves and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: HttpOptions,
    graceful: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true);
    // Closing: tells every connection to finish its request and close.
    let (closing, closing_rx) = watch::channel(());
    // Each connection task holds a sender: `recv` yields `None` once all have ended.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let mut graceful = std::pin::pin!(graceful);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is
                    // fine, so wait a little instead of spinning on the error.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut graceful => break,
        };
        // Streamed tokens are small writes that must leave at once.
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let mut closing = closing_rx.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // Also when the sender is gone: the server stopped waiting.
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // A header timeout, a client that hung up mid-request: nothing to act on.
                tracing::debug!("connection ended: {e}");
            }
            drop(alive);
        });
    }
    drop(listener);
    let _ = closing.send(());
    drop(alive);
    let _ = all_closed.recv().await;
}
