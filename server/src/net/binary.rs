//! A binary connection: length-prefixed frames, many requests in flight, replies in the
//! order the shards produce them.
//!
//! One task reads and writes. It reads every frame already buffered before it writes, and
//! writes every reply already returned before it flushes, so a pipelining client costs one
//! read and one write syscall per batch, not per request. It stops reading while
//! `requests_in_flight_max` requests are unanswered, which bounds what one client can make
//! the server hold. A frame with a bad body is answered with an ERROR for its request id;
//! a bad header is answered with an ERROR for request id 0 and ends the connection.

use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use kahu_protocol::{
    ErrorCode, FrameError, Incoming, ProtocolError, Request, Response, ServerCodec,
};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::command::{route, Routed};
use crate::server::Shared;
use crate::shard::ReplyTo;

type Writer = FramedWrite<OwnedWriteHalf, ServerCodec>;

/// Serves one binary connection. Returns true if it ever queued a waiting LOCK and has
/// not yet told the shards it is gone, so the caller tells them.
pub(super) async fn serve(stream: TcpStream, shared: &Shared, connection_id: u64) -> bool {
    let (read_half, write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, ServerCodec::default());
    let mut writer = FramedWrite::new(write_half, ServerCodec::default());
    let (sender, mut replies) = mpsc::unbounded_channel();
    let mut session = Session {
        shared,
        connection_id,
        sender,
        in_flight: 0,
        waited: false,
    };
    let mut shutdown = shared.shutdown.clone();
    let mut stopping = *shutdown.borrow();
    // The peer closed its side: answer what is in flight, then close.
    let mut peer_closed = false;
    // While paused at the in-flight limit: a second handle on the socket to notice the
    // peer going away (made only when needed), and whether it is known to be sending.
    let mut watcher: Option<TcpStream> = None;
    let mut peer_sending = false;
    let idle_timer = tokio::time::sleep(shared.connection_idle.unwrap_or(Duration::ZERO));
    tokio::pin!(idle_timer);

    let result: Result<(), FrameError> = async {
        loop {
            if (stopping || peer_closed) && session.in_flight == 0 {
                return Ok(());
            }
            let can_read =
                !stopping && !peer_closed && session.in_flight < shared.requests_in_flight_max;
            // Paused at the in-flight limit (say, every request a waiting LOCK): still watch
            // for the peer going away, so its waiters are dropped, not granted to nobody.
            let watch = !can_read && !stopping && !peer_closed && !peer_sending;
            if can_read {
                peer_sending = false;
            } else if watch && watcher.is_none() {
                watcher = Some(watch_socket(reader.get_ref())?);
            }
            let idle_applies = session.in_flight == 0 && shared.connection_idle.is_some();
            tokio::select! {
                biased;
                Some(reply) = replies.recv() => {
                    writer.feed(reply).await?;
                    session.in_flight -= 1;
                    while let Ok(reply) = replies.try_recv() {
                        writer.feed(reply).await?;
                        session.in_flight -= 1;
                    }
                    writer.flush().await?;
                    reset_idle(shared, idle_timer.as_mut());
                }
                frame = reader.next(), if can_read => {
                    let mut next = Some(frame);
                    // Take every frame already buffered before writing once.
                    while let Some(frame) = next.take() {
                        let Some(frame) = frame else {
                            peer_closed = true;
                            session.cancel_waiters();
                            break;
                        };
                        session.handle(frame, &mut writer).await?;
                        if session.in_flight < shared.requests_in_flight_max {
                            next = reader.next().now_or_never();
                        }
                    }
                    writer.flush().await?;
                    reset_idle(shared, idle_timer.as_mut());
                }
                gone = peer_gone(watcher.as_ref()), if watch => {
                    if gone {
                        peer_closed = true;
                        session.cancel_waiters();
                    } else {
                        // It sent more: alive. Look again once reading resumes.
                        peer_sending = true;
                    }
                }
                _ = crate::server::stopping(&mut shutdown), if !stopping => stopping = true,
                _ = &mut idle_timer, if idle_applies => {
                    tracing::debug!(connection_id, "closing idle connection");
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(connection_id, %error, "binary connection ended");
    }
    session.waited
}

/// A second handle on the connection's socket (a duplicated descriptor), to peek at it
/// while the frame reader is paused.
fn watch_socket(read_half: &tokio::net::tcp::OwnedReadHalf) -> std::io::Result<TcpStream> {
    use std::os::fd::AsFd;
    let descriptor = AsRef::<TcpStream>::as_ref(read_half)
        .as_fd()
        .try_clone_to_owned()?;
    let socket = std::net::TcpStream::from(descriptor);
    socket.set_nonblocking(true)?;
    TcpStream::from_std(socket)
}

/// Resolves when the socket has something to say: true if the peer is gone (end of
/// stream or an error), false if it sent data (left for the frame reader).
async fn peer_gone(watcher: Option<&TcpStream>) -> bool {
    let Some(watcher) = watcher else {
        return std::future::pending().await;
    };
    let mut byte = [0u8; 1];
    !matches!(watcher.peek(&mut byte).await, Ok(read) if read > 0)
}

fn reset_idle(shared: &Shared, timer: std::pin::Pin<&mut tokio::time::Sleep>) {
    if let Some(idle) = shared.connection_idle {
        timer.reset(Instant::now() + idle);
    }
}

struct Session<'a> {
    shared: &'a Shared,
    connection_id: u64,
    sender: mpsc::UnboundedSender<(u32, Response)>,
    in_flight: usize,
    waited: bool,
}

impl Session<'_> {
    /// The peer will send nothing more: its queued waiters are answered BUSY and dropped
    /// now, so every request in flight gets its answer and the connection can close.
    fn cancel_waiters(&mut self) {
        if std::mem::take(&mut self.waited) {
            self.shared.shards.connection_closed(self.connection_id);
        }
    }

    /// Handles one decoded frame: answers it now or sends it to its shard. A frame error
    /// is answered, then returned to end the connection.
    async fn handle(
        &mut self,
        frame: Result<Incoming, FrameError>,
        writer: &mut Writer,
    ) -> Result<(), FrameError> {
        match frame {
            Ok(Incoming::Request {
                request_id,
                request,
            }) => self.dispatch(request_id, request, writer).await,
            Ok(Incoming::Invalid { request_id, error }) => {
                writer.feed((request_id, Response::from(error))).await
            }
            Err(error) => {
                if let Some(answer) = error.to_protocol_error() {
                    let _ = writer.send((0, Response::from(answer))).await;
                }
                Err(error)
            }
        }
    }

    async fn dispatch(
        &mut self,
        request_id: u32,
        request: Request,
        writer: &mut Writer,
    ) -> Result<(), FrameError> {
        let request = match route(request, self.shared) {
            Routed::Local(response) => return writer.feed((request_id, response)).await,
            Routed::Shard(request) => request,
        };
        if matches!(&request, Request::Lock(lock) if lock.wait_ms > 0) {
            self.waited = true;
        }
        let reply = ReplyTo {
            connection_id: self.connection_id,
            request_id,
            sender: self.sender.clone(),
        };
        match self.shared.shards.submit(request, reply) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(_) => {
                let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
                writer.feed((request_id, Response::from(error))).await
            }
        }
    }
}
