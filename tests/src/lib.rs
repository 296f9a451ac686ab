//! Helpers for kahu's end-to-end tests: a real server on 127.0.0.1 with an OS-chosen
//! port and its own data directory, and raw binary and text clients that let a test see
//! exactly what is on the wire.
//!
//! Every wait here is bounded by [`STEP_TIMEOUT`], so a broken server fails a test instead
//! of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_protocol::{ClientCodec, Durability, Lock, Request, Response};
use kahu_server::{Config, RunningServer, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// The longest any single step of a test may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server started for one test; stop it with [`TestServer::stop`].
#[derive(Debug)]
pub struct TestServer {
    server: RunningServer,
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changes the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = Config::for_tests(data_dir.path());
        adjust(&mut config);
        let server = Server::start(config).await.expect("server starts");
        TestServer {
            server,
            _data_dir: data_dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn stop(self) {
        tokio::time::timeout(STEP_TIMEOUT, self.server.shutdown())
            .await
            .expect("server stops in time");
    }
}

/// Awaits `future`, failing the test if it takes longer than [`STEP_TIMEOUT`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A binary-protocol client that sends and receives frames exactly as asked.
#[derive(Debug)]
pub struct RawClient {
    framed: Framed<TcpStream, ClientCodec>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            framed: Framed::new(stream, ClientCodec::default()),
        }
    }

    /// Queues a request without flushing (for pipelining).
    pub async fn feed(&mut self, request_id: u32, request: &Request) {
        self.framed.feed((request_id, request)).await.expect("feed");
    }

    pub async fn send(&mut self, request_id: u32, request: &Request) {
        self.framed.send((request_id, request)).await.expect("send");
    }

    pub async fn flush(&mut self) {
        SinkExt::<(u32, &Request)>::flush(&mut self.framed)
            .await
            .expect("flush");
    }

    /// Writes raw bytes, bypassing the codec.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        let stream = self.framed.get_mut();
        stream.write_all(bytes).await.expect("write raw");
    }

    /// The next response, or `None` when the server closed the connection.
    pub async fn receive(&mut self) -> Option<(u32, Response)> {
        within("a response", self.framed.next())
            .await
            .map(|result| result.expect("a decodable response"))
    }

    /// Sends one request and returns its response.
    pub async fn call(&mut self, request_id: u32, request: &Request) -> Response {
        self.send(request_id, request).await;
        let (id, response) = self.receive().await.expect("a response before close");
        assert_eq!(id, request_id, "response to another request: {response:?}");
        response
    }
}

/// A text-mode client: writes lines, reads reply lines.
#[derive(Debug)]
pub struct TextClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl TextClient {
    pub async fn connect(addr: SocketAddr) -> TextClient {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let (reader, writer) = stream.into_split();
        TextClient {
            reader: BufReader::new(reader),
            writer,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Closes the write side, as `nc -N` does at the end of its input.
    pub async fn shutdown_write(&mut self) {
        self.writer.shutdown().await.expect("shutdown write");
    }

    /// The next reply line without its CRLF, or `None` at end of stream.
    pub async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = within("a reply line", self.reader.read_line(&mut line))
            .await
            .expect("read line");
        if read == 0 {
            return None;
        }
        assert!(line.ends_with("\r\n"), "reply lines end in CRLF: {line:?}");
        line.truncate(line.len() - 2);
        Some(line)
    }

    /// Sends one command line and returns the reply line.
    pub async fn command(&mut self, command: &str) -> String {
        self.write(format!("{command}\r\n").as_bytes()).await;
        self.line().await.expect("a reply line")
    }
}

/// A LOCK request with the default durability (persistent).
pub fn lock(key: &str, owner: &str, ttl_ms: u64, wait_ms: u64) -> Request {
    Request::Lock(Lock {
        key: Bytes::copy_from_slice(key.as_bytes()),
        owner: Bytes::copy_from_slice(owner.as_bytes()),
        ttl_ms,
        wait_ms,
        durability: Durability::default(),
        if_not_held: false,
    })
}

pub fn unlock(key: &str, owner: &str) -> Request {
    Request::Unlock(kahu_protocol::Unlock {
        key: Bytes::copy_from_slice(key.as_bytes()),
        owner: Bytes::copy_from_slice(owner.as_bytes()),
        token: None,
    })
}

pub fn get(key: &str) -> Request {
    Request::Get(kahu_protocol::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    })
}

/// The token of an ACQUIRED response; panics on anything else.
pub fn token(response: &Response) -> u64 {
    match response {
        Response::Acquired(acquired) => acquired.token,
        other => panic!("expected ACQUIRED, got {other:?}"),
    }
}
