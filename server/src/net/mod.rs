//! The network front end: accept, tell binary from text by the first byte, serve.
//!
//! Every connection is a tokio task. It decodes requests, answers the ones that need no
//! shard (`command::route`), sends the rest to their shard, and writes the replies that
//! come back on its own channel, as many as are ready per write. When it ends, for any
//! reason, it tells the shards so its queued waiters are dropped; the locks it holds stay
//! until their leases end, because a lease, not a connection, is what a holder owns.

mod binary;
mod text;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kahu_protocol::{ErrorCode, ProtocolError, Response, MAGIC};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::server::Shared;

/// How long a refused connection gets to send its first byte, so the refusal can be
/// written in its own encoding.
const REFUSAL_SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::server::stopping(&mut shutdown) => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    let admitted = shared.connections.open(shared.connections_max);
                    let mut shutdown = shared.shutdown.clone();
                    tokio::select! {
                        _ = serve(stream, &shared, admitted) => {}
                        _ = async {
                            crate::server::stopping(&mut shutdown).await;
                            tokio::time::sleep(shared.shutdown_grace).await;
                        } => tracing::debug!("connection dropped after the shutdown grace period"),
                    }
                    shared.connections.close();
                });
            }
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, shared: &Shared, admitted: bool) {
    let _ = stream.set_nodelay(true);
    let connection_id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let timeout = if admitted {
        shared.connection_idle
    } else {
        Some(REFUSAL_SNIFF_TIMEOUT)
    };
    let mut shutdown = shared.shutdown.clone();
    let first_byte = tokio::select! {
        byte = first_byte(&stream, timeout) => byte,
        _ = crate::server::stopping(&mut shutdown) => None,
    };
    let Some(first_byte) = first_byte else {
        return;
    };
    let binary = first_byte == MAGIC;
    if !admitted {
        refuse(stream, binary, shared.connections_max).await;
        return;
    }
    let waited = if binary {
        binary::serve(stream, shared, connection_id).await
    } else {
        text::serve(stream, shared, connection_id).await
    };
    if waited {
        shared.shards.connection_closed(connection_id);
    }
}

/// Peeks the first byte without consuming it; `None` if the peer closed or stayed silent.
async fn first_byte(stream: &TcpStream, timeout: Option<Duration>) -> Option<u8> {
    let mut byte = [0u8; 1];
    let peek = stream.peek(&mut byte);
    let peeked = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, peek).await.ok()?,
        None => peek.await,
    };
    match peeked {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

async fn refuse(mut stream: TcpStream, binary: bool, connections_max: usize) {
    let error = ProtocolError::new(
        ErrorCode::TooManyConnections,
        format!(
            "the server has connections_max ({connections_max}) connections open; try again later"
        ),
    );
    let bytes = if binary {
        let mut bytes = bytes::BytesMut::new();
        Response::from(error).encode(0, &mut bytes);
        bytes.to_vec()
    } else {
        text::error_line(&error).into_bytes()
    };
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}
