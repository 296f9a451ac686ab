//! kahu-bench: latency and throughput of a kahu server.
//!
//! Workloads:
//! - `acquire-release`: each connection owns a distinct key and loops LOCK then UNLOCK,
//!   one request in flight, timing every request into its own HdrHistogram; the histograms
//!   are merged at the end;
//! - `recovery`: the time a restarted server takes to serve a log of many live persistent
//!   locks (see `recovery.rs`).
//!
//! Open-loop rates, pipelining, contention, the echo floor and the Redis comparison come
//! with the benchmark issue.

mod recovery;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use kahu_protocol::{ClientCodec, Durability, Lock, Request, Response, Unlock};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Workload {
    AcquireRelease,
    Recovery,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Persistent,
    Ephemeral,
}
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Debug, Parser)]
#[command(
    name = "kahu-bench",
    version,
    about = "Closed-loop acquire/release latency against a kahu server"
)]
struct Options {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::AcquireRelease)]
    workload: Workload,
    /// Durability of the locks taken.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Persistent)]
    durability: DurabilityArg,
    /// recovery: live persistent locks in the log.
    #[arg(long, default_value_t = 1_000_000)]
    locks: u64,
    /// recovery: the kahu-server binary (default: beside kahu-bench).
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Server address.
    #[arg(short = 'c', long, env = "KAHU_ADDR", default_value = "127.0.0.1:8002")]
    connection_source: SocketAddr,
    /// Concurrent connections, one request in flight each.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds to run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Lease of each lock, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    ttl_ms: u64,
}

#[derive(Debug, Default)]
struct WorkerResult {
    histogram: Option<Histogram<u64>>,
    errors: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    if let Workload::Recovery = options.workload {
        let server = recovery::server_binary(options.server_bin.clone());
        return recovery::run(options.locks, &server, options.json);
    }
    let durability = match options.durability {
        DurabilityArg::Persistent => Durability::Persistent,
        DurabilityArg::Ephemeral => Durability::Ephemeral,
    };
    let warmup_end = Instant::now() + Duration::from_secs_f64(options.warmup);
    let end = warmup_end + Duration::from_secs_f64(options.duration);
    let mut workers = Vec::new();
    for worker in 0..options.connections {
        let stream = TcpStream::connect(options.connection_source).await?;
        stream.set_nodelay(true)?;
        workers.push(tokio::spawn(run_worker(
            stream,
            worker,
            options.ttl_ms,
            durability,
            warmup_end,
            end,
        )));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for worker in workers {
        let result = worker.await??;
        errors += result.errors;
        if let Some(worker_histogram) = result.histogram {
            histogram.add(worker_histogram)?;
        }
    }
    let ops = histogram.len();
    let ops_per_sec = ops as f64 / options.duration;
    let quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];
    let durability_name = match options.durability {
        DurabilityArg::Persistent => "persistent",
        DurabilityArg::Ephemeral => "ephemeral",
    };
    if options.json {
        let mut fields = format!(
            "\"workload\":\"acquire-release\",\"mode\":\"closed\",\"durability\":\"{durability_name}\",\"connections\":{},\"ops\":{ops},\"errors\":{errors},\"ops_per_sec\":{ops_per_sec:.0}",
            options.connections
        );
        for (name, quantile) in quantiles {
            fields.push_str(&format!(
                ",\"{name}_us\":{}",
                histogram.value_at_quantile(quantile)
            ));
        }
        println!("{{{fields},\"max_us\":{}}}", histogram.max());
        return Ok(());
    }
    println!(
        "workload=acquire-release durability={durability_name} connections={} duration_s={} ttl_ms={}",
        options.connections, options.duration, options.ttl_ms
    );
    println!("ops={ops} errors={errors} ops_per_sec={ops_per_sec:.0}");
    for (name, quantile) in quantiles {
        println!("{name}_us={}", histogram.value_at_quantile(quantile));
    }
    println!("max_us={}", histogram.max());
    Ok(())
}

async fn run_worker(
    stream: TcpStream,
    worker: usize,
    ttl_ms: u64,
    durability: Durability,
    warmup_end: Instant,
    end: Instant,
) -> Result<WorkerResult, std::io::Error> {
    let mut framed = Framed::new(stream, ClientCodec::default());
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let owner = Bytes::from(format!("bench-{worker}"));
    let key = Bytes::from(format!("bench-key-{worker}"));
    let lock = Request::Lock(Lock {
        key: key.clone(),
        owner: owner.clone(),
        ttl_ms,
        wait_ms: 0,
        durability,
        if_not_held: false,
    });
    let unlock = Request::Unlock(Unlock {
        key,
        owner,
        token: None,
    });
    let mut errors = 0;
    let mut request_id = 0u32;
    loop {
        for request in [&lock, &unlock] {
            let started = Instant::now();
            if started >= end {
                return Ok(WorkerResult {
                    histogram: Some(histogram),
                    errors,
                });
            }
            request_id = request_id.wrapping_add(1);
            framed
                .send((request_id, request))
                .await
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            let response = match framed.next().await {
                Some(Ok((_, response))) => response,
                Some(Err(error)) => return Err(std::io::Error::other(error.to_string())),
                None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
            if matches!(response, Response::Error(_) | Response::Busy(_)) {
                errors += 1;
            }
            if started >= warmup_end {
                let micros = started.elapsed().as_micros() as u64;
                histogram.saturating_record(micros.max(1));
            }
        }
    }
}
