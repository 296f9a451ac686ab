//! Peer mode: the acquire-release workload against Redis, as Redis users lock: `SET key
//! owner NX PX ttl` to acquire, and an owner-checked delete (`EVAL`) to release. Same
//! slots, pipelining, warm-up and histograms as the kahu load loop, so the numbers sit
//! side by side. Commands are encoded once per slot; replies come back in order (RESP), so
//! the slots in flight are a queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::Plan;
use crate::report::Measured;

const RELEASE_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// A RESP array of bulk strings.
fn command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Slot {
    lock: Vec<u8>,
    unlock: Vec<u8>,
    locking: bool,
    started: Instant,
}

/// One reply: `Ok(true)` for +OK or :1, `Ok(false)` for a nil or :0, `Err` for an error.
enum Reply {
    Yes,
    No,
    Error(String),
}

/// Takes one whole reply from the front of `buffer`, if there is one.
fn parse(buffer: &mut BytesMut) -> std::io::Result<Option<Reply>> {
    let Some(end) = buffer.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buffer[1..end]).to_string();
    let reply = match buffer[0] {
        b'+' => Reply::Yes,
        b':' => {
            if line == "0" {
                Reply::No
            } else {
                Reply::Yes
            }
        }
        b'-' => Reply::Error(line.split(' ').next().unwrap_or("ERR").to_string()),
        b'$' => {
            let length: i64 = line
                .parse()
                .map_err(|_| std::io::Error::other("bad bulk length"))?;
            if length >= 0 {
                let total = end + 2 + length as usize + 2;
                if buffer.len() < total {
                    return Ok(None);
                }
                buffer.advance(total);
                return Ok(Some(Reply::Yes));
            }
            Reply::No
        }
        other => {
            return Err(std::io::Error::other(format!(
                "unexpected RESP type {:?}",
                other as char
            )))
        }
    };
    buffer.advance(end + 2);
    Ok(Some(reply))
}

pub async fn run_connection(
    mut stream: TcpStream,
    connection: usize,
    plan: Arc<Plan>,
) -> std::io::Result<Measured> {
    let run = std::process::id();
    let ttl = plan.ttl_ms.to_string();
    let mut slots: Vec<Slot> = (0..plan.pipeline)
        .map(|slot| {
            let number = (connection * plan.pipeline + slot) % plan.keys.max(1);
            let key = format!("bench-{run}-{number}");
            let owner = format!("bench-{run}-{connection}-{slot}");
            Slot {
                lock: command(&[
                    b"SET",
                    key.as_bytes(),
                    owner.as_bytes(),
                    b"NX",
                    b"PX",
                    ttl.as_bytes(),
                ]),
                unlock: command(&[
                    b"EVAL",
                    RELEASE_SCRIPT.as_bytes(),
                    b"1",
                    key.as_bytes(),
                    owner.as_bytes(),
                ]),
                locking: true,
                started: plan.epoch,
            }
        })
        .collect();
    let mut measured = Measured::new();
    let mut in_flight: VecDeque<usize> = VecDeque::with_capacity(plan.pipeline);
    let mut out = Vec::with_capacity(plan.pipeline * 128);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let now = Instant::now();
    for (index, slot) in slots.iter_mut().enumerate() {
        slot.started = now;
        out.extend_from_slice(&slot.lock);
        in_flight.push_back(index);
    }
    stream.write_all(&out).await?;
    let end = tokio::time::Instant::from_std(plan.end);
    loop {
        let read = tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            read = stream.read_buf(&mut buffer) => read?,
        };
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        out.clear();
        while let Some(reply) = parse(&mut buffer)? {
            let index = in_flight
                .pop_front()
                .ok_or_else(|| std::io::Error::other("a reply to nothing"))?;
            let slot = &mut slots[index];
            let now = Instant::now();
            if slot.started >= plan.warmup_end {
                let micros = now.duration_since(slot.started).as_micros() as u64;
                measured.latency.saturating_record(micros.max(1));
                measured.sent += 1;
            }
            match reply {
                Reply::Yes => slot.locking = !slot.locking,
                Reply::No if slot.locking => measured.error("NOT_ACQUIRED".to_string()),
                Reply::No => slot.locking = true,
                Reply::Error(name) => measured.error(name),
            }
            slot.started = now;
            out.extend_from_slice(if slot.locking {
                &slot.lock
            } else {
                &slot.unlock
            });
            in_flight.push_back(index);
        }
        stream.write_all(&out).await?;
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(bytes: &[u8]) -> Vec<&'static str> {
        let mut buffer = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(reply) = parse(&mut buffer).unwrap() {
            out.push(match reply {
                Reply::Yes => "yes",
                Reply::No => "no",
                Reply::Error(_) => "error",
            });
        }
        out
    }

    #[test]
    fn replies_of_set_nx_and_the_release_script() {
        assert_eq!(
            replies(b"+OK\r\n$-1\r\n:1\r\n:0\r\n-ERR no\r\n"),
            ["yes", "no", "yes", "no", "error"]
        );
        // A partial reply waits for the rest.
        assert_eq!(replies(b"+OK\r\n:1"), ["yes"]);
        assert_eq!(replies(b"$3\r\nabc\r\n$3\r\nab"), ["yes"]);
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"SET", b"k", b"o"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\no\r\n"
        );
    }
}
