//! The `hold` workload: the server's memory per held lock. Reads the server's resident
//! memory (INFO `memory_rss_bytes`), takes `--locks` distinct locks (1,024 requests in
//! flight on one connection), reads it again, and reports the difference per lock.

use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_protocol::{ClientCodec, Durability, Lock, Request, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const IN_FLIGHT_MAX: u64 = 1024;

type Connection = Framed<TcpStream, ClientCodec>;

fn io(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

async fn resident_bytes(connection: &mut Connection) -> std::io::Result<u64> {
    connection
        .send((u32::MAX, &Request::Info))
        .await
        .map_err(io)?;
    match connection.next().await {
        Some(Ok((_, Response::Info(info)))) => Ok(info.get("memory_rss_bytes").unwrap_or(0)),
        other => Err(io(format!("unexpected INFO answer: {other:?}"))),
    }
}

pub async fn run(
    address: SocketAddr,
    locks: u64,
    ttl_ms: u64,
    durability: Durability,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut connection = Framed::new(stream, ClientCodec::default());
    let before = resident_bytes(&mut connection).await?;
    let run = std::process::id();
    let owner = Bytes::from(format!("hold-{run}"));
    let (mut sent, mut answered, mut refused) = (0u64, 0u64, 0u64);
    while answered < locks {
        while sent < locks && sent - answered < IN_FLIGHT_MAX {
            let request = Request::Lock(Lock {
                key: Bytes::from(format!("hold-{run}-{sent}")),
                owner: owner.clone(),
                ttl_ms,
                wait_ms: 0,
                durability,
                if_not_held: false,
            });
            connection
                .feed(((sent % u64::from(u32::MAX - 1)) as u32, &request))
                .await
                .map_err(io)?;
            sent += 1;
        }
        SinkExt::<(u32, &Request)>::flush(&mut connection)
            .await
            .map_err(io)?;
        match connection.next().await {
            Some(Ok((_, Response::Acquired(_)))) => {}
            Some(Ok(_)) => refused += 1,
            Some(Err(error)) => return Err(error.into()),
            None => return Err("the server closed the connection".into()),
        }
        answered += 1;
    }
    let after = resident_bytes(&mut connection).await?;
    let per_lock = after.saturating_sub(before) as f64 / locks.max(1) as f64;
    if json {
        println!(
            "{{\"workload\":\"hold\",\"locks\":{locks},\"refused\":{refused},\"rss_before_bytes\":{before},\"rss_after_bytes\":{after},\"bytes_per_lock\":{per_lock:.1}}}"
        );
    } else {
        println!("workload=hold locks={locks} refused={refused}");
        println!("rss_before_bytes={before} rss_after_bytes={after} bytes_per_lock={per_lock:.1}");
    }
    Ok(())
}
