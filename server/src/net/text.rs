//! The text debug mode: a person at `nc` or `telnet` types one command per line and reads
//! one reply line (CRLF-terminated) per command.
//!
//! Commands run one at a time: a LOCK that waits holds the session's next line until it is
//! answered, as a person would expect. While it waits, the task still reads the socket (up
//! to [`PENDING_BYTES_MAX`] of typed-ahead input), so a client that disconnects is noticed
//! and its waiter dropped. Telnet option negotiation (IAC sequences), CR and NUL bytes are
//! removed from each line. A line longer than `text_line_bytes_max` is answered with
//! `ERR LINE_TOO_LONG` and skipped up to its end; a line that is not UTF-8 with
//! `ERR MALFORMED`. The default owner is `text-<node>-<epoch>-<connection id>`, one per session
//! and never the same across restarts (persistent locks outlive a restart; a session after
//! it must not re-enter a lock a session before it took).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kahu_protocol::limits::TEXT_LINE_BYTES_MAX;
use kahu_protocol::text::{format_error, format_response, parse_line, TextCommand, HELP};
use kahu_protocol::{Durability, ErrorCode, ProtocolError, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::command::{route, Routed};
use crate::server::Shared;
use crate::shard::ReplyTo;

/// Input read ahead while a command waits, at most.
pub const PENDING_BYTES_MAX: usize = 64 * 1024;

/// Telnet's "interpret as command" byte and the commands that take an option byte.
const IAC: u8 = 0xFF;
const SUBNEGOTIATION_BEGIN: u8 = 0xFA;
const SUBNEGOTIATION_END: u8 = 0xF0;

/// The reply line for an error, with its terminator.
pub(super) fn error_line(error: &ProtocolError) -> String {
    let mut line = format_error(&error.clone().into());
    line.push_str("\r\n");
    line
}

struct Session<'a> {
    shared: &'a Shared,
    connection_id: u64,
    owner: Bytes,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    input: BytesMut,
    /// Inside an over-long line that was already answered: drop bytes up to its end.
    discarding: bool,
    waited: bool,
    sender: mpsc::UnboundedSender<(u32, Response)>,
    replies: mpsc::UnboundedReceiver<(u32, Response)>,
}

enum Line {
    Complete(BytesMut),
    TooLong,
    Incomplete,
}

/// Serves one text session. Returns true if it ever queued a waiting LOCK.
pub(super) async fn serve(stream: TcpStream, shared: &Shared, connection_id: u64) -> bool {
    let (reader, writer) = stream.into_split();
    let (sender, replies) = mpsc::unbounded_channel();
    let mut session = Session {
        shared,
        connection_id,
        owner: Bytes::from(format!(
            "text-{}-{}-{connection_id}",
            shared.node_id, shared.epoch
        )),
        reader,
        writer,
        input: BytesMut::with_capacity(1024),
        discarding: false,
        waited: false,
        sender,
        replies,
    };
    if let Err(error) = session.run().await {
        tracing::debug!(connection_id, %error, "text session ended");
    }
    session.waited
}

impl Session<'_> {
    async fn run(&mut self) -> std::io::Result<()> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            match self.next_line() {
                Line::Complete(line) => {
                    if !self.handle(line).await? {
                        return Ok(());
                    }
                    continue;
                }
                Line::TooLong => {
                    let error = ProtocolError::new(
                        ErrorCode::LineTooLong,
                        format!(
                            "line longer than text_line_bytes_max ({TEXT_LINE_BYTES_MAX}); skipped"
                        ),
                    );
                    self.writer.write_all(error_line(&error).as_bytes()).await?;
                    continue;
                }
                Line::Incomplete => {}
            }
            let read = tokio::select! {
                read = self.reader.read_buf(&mut self.input) => read?,
                _ = crate::server::stopping(&mut shutdown) => return Ok(()),
                _ = idle(self.shared.connection_idle) => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// Takes the next whole line from the input, or says why there is none.
    fn next_line(&mut self) -> Line {
        match self.input.iter().position(|&byte| byte == b'\n') {
            Some(end) => {
                let line = self.input.split_to(end + 1);
                if std::mem::take(&mut self.discarding) {
                    return self.next_line();
                }
                if line.len() > TEXT_LINE_BYTES_MAX {
                    return Line::TooLong;
                }
                Line::Complete(line)
            }
            None if self.input.len() > TEXT_LINE_BYTES_MAX => {
                self.input.clear();
                if std::mem::replace(&mut self.discarding, true) {
                    Line::Incomplete
                } else {
                    Line::TooLong
                }
            }
            None => Line::Incomplete,
        }
    }

    /// Runs one line; returns false when the session should end (QUIT, or the peer left
    /// while a command waited).
    async fn handle(&mut self, line: BytesMut) -> std::io::Result<bool> {
        let Ok(text) = String::from_utf8(clean_line(&line)) else {
            let error = ProtocolError::new(ErrorCode::Malformed, "line is not valid UTF-8");
            self.writer.write_all(error_line(&error).as_bytes()).await?;
            return Ok(true);
        };
        let request = match parse_line(&text, &self.owner, Durability::Persistent) {
            Ok(TextCommand::Request(request)) => request,
            Ok(TextCommand::Empty) => return Ok(true),
            Ok(TextCommand::Quit) => return Ok(false),
            Ok(TextCommand::Help) => {
                self.writer
                    .write_all(format!("{HELP}\r\n").as_bytes())
                    .await?;
                return Ok(true);
            }
            Err(error) => {
                self.writer.write_all(error_line(&error).as_bytes()).await?;
                return Ok(true);
            }
        };
        let (response, peer_closed) = self.execute(request.clone()).await?;
        let mut reply = format_response(&request, &response);
        reply.push_str("\r\n");
        self.writer.write_all(reply.as_bytes()).await?;
        Ok(!peer_closed)
    }

    /// Gets the response to a request, and whether the peer closed its side meanwhile
    /// (then its waiting LOCK is answered BUSY at once, and the session ends after the
    /// reply: `printf 'LOCK a 5000 WAIT 9000\n' | nc -N host 8002` still prints an answer).
    async fn execute(&mut self, request: Request) -> std::io::Result<(Response, bool)> {
        let request = match route(request, self.shared) {
            Routed::Local(response) => return Ok((response, false)),
            Routed::Shard(request) => request,
        };
        if matches!(&request, Request::Lock(lock) if lock.wait_ms > 0) {
            self.waited = true;
        }
        let reply = ReplyTo {
            connection_id: self.connection_id,
            request_id: 0,
            sender: self.sender.clone(),
        };
        if self.shared.shards.submit(request, reply).is_err() {
            let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
            return Ok((error.into(), false));
        }
        let mut peer_closed = false;
        loop {
            tokio::select! {
                reply = self.replies.recv() => {
                    return Ok((reply.expect("the session holds a sender").1, peer_closed));
                }
                read = self.reader.read_buf(&mut self.input), if !peer_closed && self.input.len() < PENDING_BYTES_MAX => {
                    if read? == 0 {
                        peer_closed = true;
                        if std::mem::take(&mut self.waited) {
                            self.shared.shards.connection_closed(self.connection_id);
                        }
                    }
                }
            }
        }
    }
}

/// Resolves after `idle`, or never when idle connections are kept open.
async fn idle(idle: Option<Duration>) {
    match idle {
        Some(idle) => tokio::time::sleep(idle).await,
        None => std::future::pending().await,
    }
}

/// Removes telnet IAC sequences, CR, LF and NUL bytes from a raw line.
fn clean_line(raw: &[u8]) -> Vec<u8> {
    let mut clean = Vec::with_capacity(raw.len());
    let mut bytes = raw;
    while let Some((&byte, rest)) = bytes.split_first() {
        bytes = rest;
        match byte {
            IAC => match bytes.first() {
                Some(&IAC) => {
                    clean.push(IAC);
                    bytes.advance(1);
                }
                Some(&SUBNEGOTIATION_BEGIN) => {
                    let end = bytes
                        .windows(2)
                        .position(|pair| pair == [IAC, SUBNEGOTIATION_END])
                        .map_or(bytes.len(), |position| position + 2);
                    bytes.advance(end);
                }
                // WILL, WONT, DO, DONT take an option byte; other commands stand alone.
                Some(&command) if (0xFB..=0xFE).contains(&command) => {
                    bytes.advance(bytes.len().min(2));
                }
                Some(_) => bytes.advance(1),
                None => {}
            },
            b'\r' | b'\n' | 0 => {}
            _ => clean.push(byte),
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::clean_line;

    #[test]
    fn telnet_negotiation_and_line_ends_are_removed() {
        let raw = b"\xff\xfd\x03\xff\xfb\x18\xff\xfa\x18\x00xterm\xff\xf0LOCK x 5000\r\n";
        assert_eq!(clean_line(raw), b"LOCK x 5000");
        assert_eq!(clean_line(b"PING\r\0"), b"PING");
        assert_eq!(clean_line(b"a\xff\xffb\n"), b"a\xffb");
        assert_eq!(clean_line(b"GET k\xff"), b"GET k");
    }
}
