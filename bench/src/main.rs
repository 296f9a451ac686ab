//! kahu-bench: an honest latency benchmark for kahu (and the floor under it).
//!
//! Workloads (`--workload`): `acquire-release` (each slot locks its own key, then unlocks
//! it), `contended` (every slot waits for one key; hand-off latency, release sent -> next
//! grant received, is its own histogram), `scheduler` (lock `job-queue-lock` with ttl and
//! wait, work `--work-us`, release; jobs/s), `get`, `recovery` (see `recovery.rs`) and
//! `hold` (the server's memory per held lock, see `hold.rs`).
//!
//! Modes: closed loop with `--connections C` and `--pipeline P` (requests in flight per
//! connection), or open loop with `--rate R` (requests/s over all connections, latency
//! from each request's intended start; the achieved rate is reported beside the offered
//! one). `--target echo` measures a minimal in-process server with the same frames and no
//! lock work: the floor of this machine.
//!
//! Output: a percentile table (p50, p90, p99, p99.9, p99.99, max in µs), ops/s, errors by
//! kind and the settings; `--json` prints one object; `--hgrm FILE` writes the full
//! percentile distribution. Per-connection histograms are merged at the end.

mod cluster;
mod echo;
mod failover;
mod hold;
mod load;
mod recovery;
mod redis;
mod report;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kahu_protocol::Durability;
use load::{Plan, Workload};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Persistent,
    Ephemeral,
}

#[derive(Debug, Parser)]
#[command(
    name = "kahu-bench",
    version,
    about = "Latency and throughput of a kahu server"
)]
struct Options {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::AcquireRelease)]
    workload: Workload,
    /// `kahu` (the server at --connection-source), `echo` (an in-process floor server), or
    /// `redis://HOST:PORT` (acquire-release as SET NX PX and an owner-checked EVAL delete).
    #[arg(long, default_value = "kahu")]
    target: String,
    /// Durability of the locks taken.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Persistent)]
    durability: DurabilityArg,
    /// Server address, or a cluster's nodes comma-separated (each connection then goes to
    /// a shard leader, with keys on the shards it leads).
    #[arg(
        short = 'c',
        long,
        env = "KAHU_ADDR",
        default_value = "127.0.0.1:8002",
        value_delimiter = ','
    )]
    connection_source: Vec<SocketAddr>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection (each on its own key, but for contended and
    /// scheduler, which share one).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Open loop: requests per second over all connections (latency from intended start).
    /// Pacing uses the runtime's timer, which has millisecond resolution: latencies include
    /// up to about 1 ms of pacing delay, so use the open loop to see tails under load, and
    /// the closed loop for sub-millisecond medians.
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct keys for acquire-release and get (default: one per slot).
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds to run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Lease of each lock, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    ttl_ms: u64,
    /// contended and scheduler: how long a request waits in the server queue.
    #[arg(long, default_value_t = 5_000)]
    wait_ms: u64,
    /// scheduler: microseconds of work while holding the lock (below 1 ms, done by keeping
    /// the connection's task busy; above, by a timer).
    #[arg(long, default_value_t = 100)]
    work_us: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the full latency distribution (HdrHistogram .hgrm text) to this file.
    #[arg(long)]
    hgrm: Option<std::path::PathBuf>,
    /// recovery: live persistent locks in the log; hold: locks to take.
    #[arg(long, default_value_t = 1_000_000)]
    locks: u64,
    /// recovery, failover: the kahu-server binary (default: beside kahu-bench).
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// failover: shard leaders to kill, one sample each.
    #[arg(long, default_value_t = 10)]
    kills: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    if options.workload == Workload::Recovery {
        let server = recovery::server_binary(options.server_bin.clone());
        return recovery::run(options.locks, &server, options.json);
    }
    if options.workload == Workload::Failover {
        let server = recovery::server_binary(options.server_bin.clone());
        return tokio::task::spawn_blocking(move || {
            failover::run(options.kills, &server, options.json).map_err(|error| error.to_string())
        })
        .await?
        .map_err(Into::into);
    }
    if options.workload == Workload::Hold {
        let durability = match options.durability {
            DurabilityArg::Persistent => Durability::Persistent,
            DurabilityArg::Ephemeral => Durability::Ephemeral,
        };
        return hold::run(
            options.connection_source[0],
            options.locks,
            options.ttl_ms,
            durability,
            options.json,
        )
        .await;
    }
    if options.connections == 0 || options.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    if options.rate.is_some()
        && !matches!(options.workload, Workload::AcquireRelease | Workload::Get)
    {
        return Err("--rate (open loop) applies to acquire-release and get".into());
    }
    let redis = options.target.strip_prefix("redis://").map(str::to_string);
    if redis.is_some() && (options.workload != Workload::AcquireRelease || options.rate.is_some()) {
        return Err("--target redis:// runs the closed-loop acquire-release workload".into());
    }
    let address: SocketAddr = match (options.target.as_str(), &redis) {
        ("kahu", _) => options.connection_source[0],
        ("echo", _) => echo::start()?,
        (_, Some(address)) => tokio::net::lookup_host(address.as_str())
            .await?
            .next()
            .ok_or("--target redis://: no address")?,
        (other, None) => {
            return Err(
                format!("unknown --target {other:?}: use kahu, echo or redis://HOST:PORT").into(),
            )
        }
    };
    let (durability, durability_name) = match options.durability {
        _ if redis.is_some() => (Durability::Ephemeral, "redis-config"),
        DurabilityArg::Persistent => (Durability::Persistent, "persistent"),
        DurabilityArg::Ephemeral => (Durability::Ephemeral, "ephemeral"),
    };
    let routes = if options.target == "kahu" && options.connection_source.len() > 1 {
        let shared = matches!(options.workload, Workload::Contended | Workload::Scheduler)
            .then(load::shared_key_name);
        Some(
            cluster::discover(
                &options.connection_source,
                options.connections,
                shared.as_deref(),
            )
            .await?,
        )
    } else {
        None
    };
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(options.warmup);
    let plan = Arc::new(Plan {
        workload: options.workload,
        durability,
        ttl_ms: options.ttl_ms,
        wait_ms: options.wait_ms,
        work: Duration::from_micros(options.work_us),
        pipeline: options.pipeline,
        keys: if options.keys == 0 {
            options.connections * options.pipeline
        } else {
            options.keys
        },
        rate_per_connection: options.rate.map(|rate| rate / options.connections as f64),
        warmup_end,
        end: warmup_end + Duration::from_secs_f64(options.duration),
        epoch: start,
        last_release_ns: AtomicU64::new(0),
        progress: AtomicU64::new(0),
        count_progress: std::io::stderr().is_terminal() && !options.json,
        routes: routes.clone(),
    });
    let mut connections = Vec::with_capacity(options.connections);
    for connection in 0..options.connections {
        let address = routes
            .as_ref()
            .map_or(address, |routes| routes.connections[connection].0);
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        if redis.is_some() {
            connections.push(tokio::spawn(redis::run_connection(
                stream,
                connection,
                plan.clone(),
            )));
        } else {
            connections.push(tokio::spawn(load::run_connection(
                stream,
                connection,
                plan.clone(),
            )));
        }
    }
    if plan.count_progress {
        tokio::spawn(progress(plan.clone()));
    }
    let mut measured = report::Measured::new();
    for connection in connections {
        measured.merge(connection.await??);
    }
    if plan.count_progress {
        eprint!("\r\x1b[2K");
    }
    if let Some(path) = &options.hgrm {
        report::write_hgrm(path, &measured.latency)?;
    }
    let settings = report::Settings {
        workload: options.workload.name(),
        mode: if options.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        target: options.target.clone(),
        durability: durability_name,
        connections: options.connections,
        pipeline: options.pipeline,
        rate: options.rate,
        duration: options.duration,
    };
    report::print(&settings, &measured, options.json);
    Ok(())
}

/// A live progress line on a terminal, once a second.
async fn progress(plan: Arc<Plan>) {
    let mut last = 0;
    while Instant::now() < plan.end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = plan.progress.load(Ordering::Relaxed);
        eprint!("\r\x1b[2K{} ops/s ({} so far)", now - last, now);
        last = now;
    }
}
