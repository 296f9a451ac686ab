//! What happens to a request once decoded, whichever encoding it came in: answered on the
//! connection's task (HELLO, PING, INFO, and requests this server refuses), or sent to the
//! shard that owns its key.

use kahu_protocol::{
    limits, ErrorCode, HelloOk, InfoReply, ProtocolError, Request, Response, VERSION,
};

use crate::server::Shared;

/// Where a request goes.
#[derive(Debug)]
pub enum Routed {
    /// The answer, ready now.
    Local(Response),
    /// A keyed request, or a membership change, for its shard.
    Shard(Request),
}

pub fn route(request: Request, shared: &Shared) -> Routed {
    match request {
        Request::Ping => Routed::Local(Response::Pong),
        Request::Info => Routed::Local(Response::Info(info(shared))),
        Request::Hello(hello) => Routed::Local(
            if (hello.version_min..=hello.version_max).contains(&VERSION) {
                Response::HelloOk(hello_ok(shared))
            } else {
                ProtocolError::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks versions {}..={}; this server speaks version {VERSION}",
                        hello.version_min, hello.version_max
                    ),
                )
                .into()
            },
        ),
        Request::Members(_) if !shared.clustered => Routed::Local(
            ProtocolError::new(
                ErrorCode::Unsupported,
                "this server runs alone, without --peers: start it with --peers \
                 ID=PEER_ADDR/CLIENT_ADDR (its own entry) to let nodes be added",
            )
            .into(),
        ),
        Request::Members(members) if usize::from(members.shard) >= shared.shards.len() => {
            Routed::Local(
                ProtocolError::new(
                    ErrorCode::BadMembership,
                    format!(
                        "shard {} does not exist: this cluster has {} shards",
                        members.shard,
                        shared.shards.len()
                    ),
                )
                .into(),
            )
        }
        keyed => Routed::Shard(keyed),
    }
}

fn hello_ok(shared: &Shared) -> HelloOk {
    HelloOk {
        version: VERSION,
        server_name: format!("kahu/{}", env!("CARGO_PKG_VERSION")),
        shard_count: shared.shards.len() as u16,
        frame_bytes_max: limits::FRAME_BYTES_MAX as u32,
        key_bytes_max: limits::KEY_BYTES_MAX as u16,
        owner_bytes_max: limits::OWNER_BYTES_MAX as u16,
        ttl_ms_max: limits::TTL_MS_MAX,
        wait_ms_max: limits::WAIT_MS_MAX,
    }
}

fn info(shared: &Shared) -> InfoReply {
    let mut fields = vec![
        (
            "uptime_ms".to_string(),
            shared.started.elapsed().as_millis() as u64,
        ),
        ("epoch".to_string(), shared.epoch),
        ("shards".to_string(), shared.shards.len() as u64),
        ("connections".to_string(), shared.connections.current()),
        ("connections_total".to_string(), shared.connections.total()),
        (
            "connections_refused_total".to_string(),
            shared.connections.refused(),
        ),
        ("memory_rss_bytes".to_string(), resident_bytes()),
    ];
    fields.extend(shared.shards.stats());
    if let Some(peer_stats) = &shared.peer_stats {
        fields.extend(peer_stats.fields());
    }
    fields.extend(shared.shards.raft_status());
    InfoReply { fields }
}

/// The server's resident memory (`VmRSS` of /proc/self/status), or 0 where unknown.
fn resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kilobytes| kilobytes.trim().parse::<u64>().ok())
        .map_or(0, |kilobytes| kilobytes * 1024)
}
