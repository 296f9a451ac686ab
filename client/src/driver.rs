//! The connection driver: the one task that owns a client's TCP connection to one node.
//! A client has one driver per node it has sent a request to (see [`crate::node`]).
//!
//! ```text
//! callers ──(Request, oneshot)──► unbounded mpsc ──► Driver ──frames──► server
//!    ▲                                                 │
//!    └──────────── oneshot, routed by request id ◄─────┘◄──responses (any order)
//! ```
//!
//! Each turn the driver takes every queued command into the write buffer, flushes once
//! (many requests, one write), then reads every response that has arrived and hands each
//! to the caller waiting on its request id. Reading and writing are polled in the same
//! turn, so a caller sending many requests never stops responses from being read.
//!
//! Invariants:
//! - a request id is never 0 (the server uses 0 for connection-level errors) and never
//!   shared by two requests in flight on one connection, counting requests whose callers
//!   gave up: their ids stay taken until the server answers (see [`crate::pending`]);
//! - at most [`crate::pending::REQUESTS_IN_FLIGHT_MAX`] requests are in flight; when that
//!   many are, the driver takes no command until a reply arrives;
//! - every command taken from the channel gets exactly one reply: its response, or an error
//!   when the connection is lost or cannot be made. A command without a reply channel is
//!   answered to nobody;
//! - the driver holds no sender of its own channel, so it ends when the last
//!   [`crate::Client`] is dropped, after its pending requests are answered (at most one
//!   request timeout later).
//!
//! Connections are opened lazily: a driver started without one (a node first named by a
//! NOT_LEADER hint), or whose connection was lost, waits for the next command and then
//! connects, with bounded attempts and backoff. Each HELLO answer is published where every
//! driver of the client publishes it ([`crate::Client::server_hello`]).
//!
//! Where a request goes, and whether it is sent again elsewhere, is decided above the
//! drivers (`Client::call`, [`crate::router`]); a driver only sends what it is given. Timeouts are kept by the
//! callers (`Client::call`); a request whose caller has gone before it was written is not
//! sent, and a reply for one whose caller has gone since is dropped.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, Stream, StreamExt};
use kahu_protocol::codec::ClientDecodeError;
use kahu_protocol::{ClientCodec, Hello, HelloOk, Request, Response, VERSION};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, timeout, Sleep};
use tokio_util::codec::Framed;

use crate::error::Error;
use crate::options::ClientOptions;
use crate::pending::{PendingRequests, HELLO_REQUEST_ID};

pub(crate) type Connection = Framed<TcpStream, ClientCodec>;
pub(crate) type ReplySender = oneshot::Sender<Result<Response, Error>>;

/// A request on its way to the driver, with the channel its answer goes back on (`None`:
/// nobody waits for it).
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) request: Request,
    pub(crate) reply: Option<ReplySender>,
}

/// Commands taken into the write buffer per turn before responses are read.
const COMMANDS_PER_TURN_MAX: usize = 1024;
/// Responses routed per turn before queued commands are taken again.
const RESPONSES_PER_TURN_MAX: usize = 1024;

/// Opens a connection and exchanges HELLO, with up to `connect_attempts_max` attempts and
/// a doubling pause between them. A final refusal (a non-retryable ERROR to HELLO) ends the
/// attempts at once.
pub(crate) async fn connect(
    address: &str,
    options: &ClientOptions,
) -> Result<(Connection, HelloOk), Error> {
    let mut last_error = None;
    for attempt in 0..options.connect_attempts_max {
        if attempt > 0 {
            sleep(options.backoff_before(attempt)).await;
        }
        let error = match timeout(options.connect_timeout, open(address, options)).await {
            Ok(Ok(opened)) => return Ok(opened),
            Ok(Err(error)) if !error.is_retryable() => return Err(error),
            Ok(Err(error)) => error,
            Err(_) => Error::connect(
                address,
                format!("no HELLO reply within {:?}", options.connect_timeout),
            ),
        };
        tracing::debug!(address, attempt, %error, "connection attempt failed");
        last_error = Some(error);
    }
    Err(last_error.expect("connect_attempts_max is validated to be at least 1"))
}

/// One attempt: TCP connect (TCP_NODELAY, since every request is latency bound), then
/// HELLO offering exactly the version this crate speaks.
async fn open(address: &str, options: &ClientOptions) -> Result<(Connection, HelloOk), Error> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| Error::connect_io(address, error))?;
    stream
        .set_nodelay(true)
        .map_err(|error| Error::connect_io(address, error))?;
    let mut connection = Framed::new(stream, ClientCodec::default());
    let hello = Request::Hello(Hello {
        version_min: VERSION,
        version_max: VERSION,
        client_name: options.client_name.clone(),
    });
    connection
        .send((HELLO_REQUEST_ID, &hello))
        .await
        .map_err(|error| Error::connect(address, format!("sending HELLO failed: {error}")))?;
    match connection.next().await {
        Some(Ok((_, Response::HelloOk(hello)))) if hello.version == VERSION => {
            Ok((connection, hello))
        }
        Some(Ok((_, Response::HelloOk(hello)))) => Err(Error::Protocol(format!(
            "the server chose protocol version {}; this client speaks {VERSION}",
            hello.version
        ))),
        Some(Ok((_, Response::Error(reply)))) => Err(Error::Server(reply)),
        Some(Ok((_, other))) => Err(Error::Protocol(format!(
            "the server answered HELLO with {}",
            other.opcode().name()
        ))),
        Some(Err(error)) => Err(Error::connect(
            address,
            format!("not a kahu server? its HELLO reply did not decode: {error}"),
        )),
        None => Err(Error::connect(
            address,
            "the server closed the connection during HELLO",
        )),
    }
}

/// How a connection ended.
enum Ended {
    /// Every client handle is gone and nothing is pending: the driver stops.
    Closed,
    /// The connection failed; pending requests fail with this reason.
    Lost(String),
}

/// Per-connection state of [`Driver::serve`].
struct Serving {
    unflushed: bool,
    closing: bool,
    close_deadline: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug)]
pub(crate) struct Driver {
    address: String,
    options: ClientOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    /// A command taken from the channel that is still to be sent (the one that triggered a
    /// reconnect).
    carried: Option<Command>,
    /// Requests sent and not yet answered, by request id, tombstones included.
    pending: PendingRequests,
    /// Shared by every driver of one client: the latest HELLO answer from any node.
    hello: Arc<watch::Sender<Arc<HelloOk>>>,
    wait_ms_max: Arc<AtomicU64>,
}

impl Driver {
    pub(crate) fn new(
        address: String,
        options: ClientOptions,
        commands: mpsc::UnboundedReceiver<Command>,
        hello: Arc<watch::Sender<Arc<HelloOk>>>,
        wait_ms_max: Arc<AtomicU64>,
    ) -> Driver {
        Driver {
            address,
            options,
            commands,
            carried: None,
            pending: PendingRequests::new(),
            hello,
            wait_ms_max,
        }
    }

    /// Serves `connection` (when the client opened one already), then connects whenever
    /// there is no connection and something to send, until every client handle is dropped.
    pub(crate) async fn run(mut self, connection: Option<Connection>) {
        let mut next = connection;
        loop {
            let mut connection = match next.take() {
                Some(connection) => connection,
                None => match self.reconnect().await {
                    Some(Some(connection)) => connection,
                    Some(None) => continue,
                    None => return,
                },
            };
            match self.serve(&mut connection).await {
                Ended::Closed => return,
                Ended::Lost(reason) => {
                    tracing::debug!(address = %self.address, %reason, "connection lost");
                    self.pending.fail_all(&reason);
                }
            }
        }
    }

    /// Waits for a command, then connects. `None`: every client is gone. `Some(None)`: the
    /// connection could not be made and every queued command got the error.
    async fn reconnect(&mut self) -> Option<Option<Connection>> {
        let first = match self.carried.take() {
            Some(command) => command,
            None => self.commands.recv().await?,
        };
        match connect(&self.address, &self.options).await {
            Ok((connection, hello)) => {
                tracing::debug!(address = %self.address, "connected");
                self.publish(hello);
                self.carried = Some(first);
                Some(Some(connection))
            }
            Err(error) => {
                reply(first.reply, Err(error.clone()));
                while let Ok(command) = self.commands.try_recv() {
                    reply(command.reply, Err(error.clone()));
                }
                Some(None)
            }
        }
    }

    fn publish(&self, hello: HelloOk) {
        self.wait_ms_max.store(hello.wait_ms_max, Ordering::Relaxed);
        self.hello.send_replace(Arc::new(hello));
    }

    async fn serve(&mut self, connection: &mut Connection) -> Ended {
        let mut state = Serving {
            unflushed: false,
            closing: false,
            close_deadline: None,
        };
        poll_fn(|cx| self.poll_serve(connection, &mut state, cx)).await
    }

    /// One turn: take commands, flush once, route responses. Returns `Pending` only after
    /// every source it depends on has registered the waker.
    fn poll_serve(
        &mut self,
        connection: &mut Connection,
        state: &mut Serving,
        cx: &mut Context<'_>,
    ) -> Poll<Ended> {
        if let Err(reason) = self.poll_commands(connection, state, cx) {
            return Poll::Ready(Ended::Lost(reason));
        }
        if state.unflushed {
            match sink_poll_flush(connection, cx) {
                Poll::Ready(Ok(())) => state.unflushed = false,
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Ended::Lost(format!("write failed: {error}")))
                }
                Poll::Pending => {}
            }
        }
        if let Err(reason) = self.poll_responses(connection, cx) {
            return Poll::Ready(Ended::Lost(reason));
        }
        if state.closing && !state.unflushed {
            if self.pending.is_empty() {
                return Poll::Ready(Ended::Closed);
            }
            let request_timeout = self.options.request_timeout;
            let deadline = state
                .close_deadline
                .get_or_insert_with(|| Box::pin(sleep(request_timeout)));
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Closed);
            }
        }
        Poll::Pending
    }

    /// Moves queued commands into the write buffer while it has room and fewer than
    /// [`crate::pending::REQUESTS_IN_FLIGHT_MAX`] requests are in flight. When that many
    /// are, the task is woken by the next response (`poll_responses` has registered for it).
    fn poll_commands(
        &mut self,
        connection: &mut Connection,
        state: &mut Serving,
        cx: &mut Context<'_>,
    ) -> Result<(), String> {
        if state.closing {
            return Ok(());
        }
        for _ in 0..COMMANDS_PER_TURN_MAX {
            if self.pending.is_full() {
                tracing::trace!(
                    requests_in_flight = self.pending.len(),
                    "requests_in_flight_max reached; waiting for replies"
                );
                return Ok(());
            }
            match sink_poll_ready(connection, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Err(format!("write failed: {error}")),
                Poll::Pending => return Ok(()),
            }
            let command = match self.carried.take() {
                Some(command) => command,
                None => match self.commands.poll_recv(cx) {
                    Poll::Ready(Some(command)) => command,
                    Poll::Ready(None) => {
                        state.closing = true;
                        return Ok(());
                    }
                    Poll::Pending => return Ok(()),
                },
            };
            state.unflushed |= self.start_send(connection, command)?;
        }
        // The budget is spent and commands may still be queued: read responses first,
        // then come back.
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Encodes one request into the write buffer. Returns false when its caller has
    /// already given up, so the request is not sent at all. When encoding fails the entry
    /// stays, and is failed with the rest when the connection is dropped.
    fn start_send(
        &mut self,
        connection: &mut Connection,
        command: Command,
    ) -> Result<bool, String> {
        if command
            .reply
            .as_ref()
            .is_some_and(|reply| reply.is_closed())
        {
            return Ok(false);
        }
        let request_id = self.pending.insert(command.reply);
        Pin::new(&mut *connection)
            .start_send((request_id, &command.request))
            .map_err(|error| format!("write failed: {error}"))?;
        Ok(true)
    }

    /// Routes every response that has arrived to its caller.
    fn poll_responses(
        &mut self,
        connection: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Result<(), String> {
        for _ in 0..RESPONSES_PER_TURN_MAX {
            match Pin::new(&mut *connection).poll_next(cx) {
                Poll::Ready(Some(Ok((0, Response::Error(error))))) => {
                    return Err(format!(
                        "the server closed the connection: {}: {}",
                        error.code_name(),
                        error.message
                    ))
                }
                Poll::Ready(Some(Ok((request_id, response)))) => {
                    if !self.pending.complete(request_id, Ok(response)) {
                        tracing::trace!(request_id, "reply nobody waits for (dropped)");
                    }
                }
                Poll::Ready(Some(Err(ClientDecodeError::Body { request_id, error }))) => {
                    let message = format!("undecodable reply from the server: {error}");
                    self.pending
                        .complete(request_id, Err(Error::Protocol(message.clone())));
                    return Err(message);
                }
                Poll::Ready(Some(Err(ClientDecodeError::Frame(error)))) => {
                    return Err(error.to_string())
                }
                Poll::Ready(None) => return Err("the server closed the connection".to_string()),
                Poll::Pending => return Ok(()),
            }
        }
        cx.waker().wake_by_ref();
        Ok(())
    }
}

/// A request as the codec encodes it.
type Outgoing<'a> = (u32, &'a Request);

fn sink_poll_ready(
    connection: &mut Connection,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ClientDecodeError>> {
    Sink::<Outgoing<'_>>::poll_ready(Pin::new(connection), cx)
}

fn sink_poll_flush(
    connection: &mut Connection,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ClientDecodeError>> {
    Sink::<Outgoing<'_>>::poll_flush(Pin::new(connection), cx)
}

fn reply(sender: Option<ReplySender>, result: Result<Response, Error>) {
    if let Some(sender) = sender {
        // The caller may have given up; then nobody wants the answer.
        let _ = sender.send(result);
    }
}
