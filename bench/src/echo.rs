//! The floor: a minimal server on loopback inside kahu-bench that answers every request
//! frame with a response of the size kahu would send (ACQUIRED, RELEASED, NOT_HELD...) and
//! does no lock work. The same load loop measures it, so every user sees how close kahu
//! is to their own machine's limit.

use std::net::SocketAddr;

use futures::{FutureExt, SinkExt, StreamExt};
use kahu_protocol::{
    Acquired, ErrorCode, Extended, Incoming, NotHeld, ProtocolError, Released, Request, Response,
    ServerCodec,
};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// Starts the echo server on 127.0.0.1 with an OS-chosen port, on a thread and runtime of
/// its own: like a real server, each request then crosses threads (sharing the client's
/// runtime would skip those wake-ups and report a floor no server can reach).
pub fn start() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("kahu-bench-echo".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(Framed::new(stream, ServerCodec::default())));
                }
            })
        })?;
    Ok(address)
}

async fn serve(mut framed: Framed<tokio::net::TcpStream, ServerCodec>) {
    while let Some(Ok(frame)) = framed.next().await {
        let mut frame = Some(frame);
        // Answer every frame already read, then write once.
        while let Some(incoming) = frame.take() {
            let (id, response) = match incoming {
                Incoming::Request {
                    request_id,
                    request,
                } => (request_id, answer(&request)),
                Incoming::Invalid { request_id, error } => (request_id, Response::from(error)),
            };
            if framed.feed((id, response)).await.is_err() {
                return;
            }
            if let Some(Some(Ok(next))) = framed.next().now_or_never() {
                frame = Some(next);
            }
        }
        if framed.flush().await.is_err() {
            return;
        }
    }
}

fn answer(request: &Request) -> Response {
    match request {
        Request::Lock(lock) => Response::Acquired(Acquired {
            token: 1,
            ttl_ms: lock.ttl_ms,
            reentered: false,
        }),
        Request::Unlock(_) => Response::Released(Released { token: 1 }),
        Request::Extend(extend) => Response::Extended(Extended {
            token: 1,
            ttl_ms: extend.ttl_ms,
        }),
        Request::Get(_) => Response::NotHeld(NotHeld { last_token: 1 }),
        Request::Ping | Request::Hello(_) | Request::Info => Response::Pong,
        // Never in the measured load; answered as a server without membership changes would.
        Request::Members(_) => {
            ProtocolError::new(ErrorCode::Unsupported, "the echo server has no members").into()
        }
    }
}
