//! The load loop of one connection: `pipeline` slots, each with at most one request in
//! flight (its request id is its slot number, so no map is needed), driven closed-loop (a
//! slot sends its next request as soon as the last is answered) or open-loop (requests
//! start on a fixed schedule; latency counts from each request's intended start, so a
//! stall shows up in the tail instead of hiding: no coordinated omission).
//!
//! Nothing on the measuring path allocates or locks: requests are built once per slot and
//! reused, histograms are per connection and merged at the end. (The optional progress
//! counter is one relaxed atomic add, only when stderr is a terminal.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use kahu_protocol::{ClientCodec, Durability, Get, Lock, Request, Response, Unlock};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::report::Measured;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Each slot locks its own key, then unlocks it (uncontended).
    AcquireRelease,
    /// Every slot of every connection waits for one key, then releases it at once:
    /// measures hand-off latency.
    Contended,
    /// The job-scheduler pattern: lock `job-queue-lock` with ttl and wait, work
    /// `--work-us`, release; reports jobs/s and the wait for the lock as latency.
    Scheduler,
    /// Read lock info of a key the slot holds.
    Get,
    /// The time a restarted server takes to serve a log of many live persistent locks.
    Recovery,
    /// The server's memory per held lock.
    Hold,
    /// A 3-node cluster: time from SIGKILL of a shard leader to the next grant there.
    Failover,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::AcquireRelease => "acquire-release",
            Workload::Contended => "contended",
            Workload::Scheduler => "scheduler",
            Workload::Get => "get",
            Workload::Recovery => "recovery",
            Workload::Hold => "hold",
            Workload::Failover => "failover",
        }
    }
}

/// What every connection of a run does.
#[derive(Debug)]
pub struct Plan {
    pub workload: Workload,
    pub durability: Durability,
    pub ttl_ms: u64,
    pub wait_ms: u64,
    pub work: Duration,
    pub pipeline: usize,
    pub keys: usize,
    /// Open loop: requests per second for this connection.
    pub rate_per_connection: Option<f64>,
    pub warmup_end: Instant,
    pub end: Instant,
    pub epoch: Instant,
    /// contended: when the last UNLOCK was sent, in ns since `epoch` (0: none yet).
    pub last_release_ns: AtomicU64,
    /// Progress: responses so far, counted only when `count_progress`.
    pub progress: AtomicU64,
    pub count_progress: bool,
    /// Against a cluster: which shards each connection's keys must be on.
    pub routes: Option<crate::cluster::Routes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Lock,
    Unlock,
    Get,
}

struct Slot {
    lock: Request,
    unlock: Request,
    get: Request,
    next: Step,
    /// When the request in flight started (intended start, in open loop).
    started: Instant,
    busy: bool,
}

/// The one key of the contended and scheduler workloads (named per run, like every key).
pub fn shared_key_name() -> String {
    format!("job-queue-lock-{}", std::process::id())
}

impl Slot {
    fn new(plan: &Plan, connection: usize, slot: usize) -> Slot {
        let shared_key = matches!(plan.workload, Workload::Contended | Workload::Scheduler);
        // Keys are named per run, so locks a previous run left held (until their lease
        // ends) cannot disturb this one.
        let run = std::process::id();
        let key = if shared_key {
            Bytes::from(shared_key_name())
        } else {
            let number = (connection * plan.pipeline + slot) % plan.keys.max(1);
            let base = format!("bench-{run}-{number}");
            match &plan.routes {
                Some(routes) => Bytes::from(routes.key(connection, &base)),
                None => Bytes::from(base),
            }
        };
        let owner = Bytes::from(format!("bench-{}-{connection}-{slot}", std::process::id()));
        let wait_ms = if shared_key { plan.wait_ms } else { 0 };
        Slot {
            lock: Request::Lock(Lock {
                key: key.clone(),
                owner: owner.clone(),
                ttl_ms: plan.ttl_ms,
                wait_ms,
                durability: plan.durability,
                if_not_held: false,
            }),
            unlock: Request::Unlock(Unlock {
                key: key.clone(),
                owner,
                token: None,
            }),
            get: Request::Get(Get { key }),
            next: Step::Lock,
            started: plan.epoch,
            busy: false,
        }
    }

    fn request(&self) -> &Request {
        match self.next {
            Step::Lock => &self.lock,
            Step::Unlock => &self.unlock,
            Step::Get => &self.get,
        }
    }
}

type Writer = FramedWrite<tokio::net::tcp::OwnedWriteHalf, ClientCodec>;

fn io(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// Runs one connection until the plan's end; returns what it measured.
pub async fn run_connection(
    stream: TcpStream,
    connection: usize,
    plan: Arc<Plan>,
) -> std::io::Result<Measured> {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, ClientCodec::default());
    let mut writer = FramedWrite::new(write, ClientCodec::default());
    let mut slots: Vec<Slot> = (0..plan.pipeline)
        .map(|slot| Slot::new(&plan, connection, slot))
        .collect();
    let mut measured = Measured::new();
    let open_loop = plan.rate_per_connection.is_some();
    let interval = plan
        .rate_per_connection
        .map(|rate| Duration::from_secs_f64(1.0 / rate))
        .unwrap_or(Duration::MAX);
    // Open loop: intended starts waiting for a free slot, and the next intended start.
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut next_tick = Instant::now();
    // scheduler: slots working, by when they finish.
    let mut working: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();

    if !open_loop {
        for slot in 0..slots.len() {
            send(
                &mut writer,
                &mut slots,
                slot,
                Instant::now(),
                &plan,
                &mut measured,
            )
            .await?;
        }
        SinkExt::<(u32, &Request)>::flush(&mut writer)
            .await
            .map_err(io)?;
    }
    let end = tokio::time::Instant::from_std(plan.end);
    loop {
        let next_work = working.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(end) => break,
            frame = reader.next() => {
                let mut frame = frame;
                loop {
                    let Some(frame_result) = frame else { return Err(std::io::ErrorKind::UnexpectedEof.into()) };
                    let (id, response) = frame_result.map_err(io)?;
                    let slot = id as usize;
                    let action = answered(&mut slots[slot], &response, &plan, &mut measured);
                    match action {
                        Next::Send if !open_loop => {
                            send(&mut writer, &mut slots, slot, Instant::now(), &plan, &mut measured).await?;
                        }
                        Next::Send => {
                            if let Some(intended) = backlog.pop_front() {
                                send(&mut writer, &mut slots, slot, intended, &plan, &mut measured).await?;
                            }
                        }
                        Next::Work(until) => working.push(Reverse((until, slot))),
                    }
                    match reader.next().now_or_never() {
                        Some(more) => frame = more,
                        None => break,
                    }
                }
                SinkExt::<(u32, &Request)>::flush(&mut writer).await.map_err(io)?;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next_tick)), if open_loop => {
                let intended = next_tick;
                next_tick += interval;
                match slots.iter().position(|slot| !slot.busy) {
                    Some(slot) => {
                        send(&mut writer, &mut slots, slot, intended, &plan, &mut measured).await?;
                        SinkExt::<(u32, &Request)>::flush(&mut writer).await.map_err(io)?;
                    }
                    None => backlog.push_back(intended),
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next_work.unwrap_or(plan.end))), if next_work.is_some() => {
                let now = Instant::now();
                while let Some(&Reverse((at, slot))) = working.peek() {
                    if at > now {
                        break;
                    }
                    working.pop();
                    send(&mut writer, &mut slots, slot, now, &plan, &mut measured).await?;
                }
                SinkExt::<(u32, &Request)>::flush(&mut writer).await.map_err(io)?;
            }
        }
    }
    Ok(measured)
}

/// Queues the slot's next request, started (or intended to start) at `started`.
async fn send(
    writer: &mut Writer,
    slots: &mut [Slot],
    slot: usize,
    started: Instant,
    plan: &Plan,
    measured: &mut Measured,
) -> std::io::Result<()> {
    let state = &mut slots[slot];
    state.started = started;
    state.busy = true;
    if state.next == Step::Unlock && plan.workload == Workload::Contended {
        let since_epoch = Instant::now().duration_since(plan.epoch).as_nanos() as u64;
        plan.last_release_ns
            .store(since_epoch.max(1), Ordering::Relaxed);
    }
    if started >= plan.warmup_end {
        measured.sent += 1;
    }
    writer
        .feed((slot as u32, state.request()))
        .await
        .map_err(io)
}

enum Next {
    /// Send the slot's next request (closed loop: now; open loop: when scheduled).
    Send,
    /// scheduler: hold the lock until then, then release.
    Work(Instant),
}

/// Records a response and moves the slot to its next step.
fn answered(slot: &mut Slot, response: &Response, plan: &Plan, measured: &mut Measured) -> Next {
    let now = Instant::now();
    slot.busy = false;
    if slot.started >= plan.warmup_end {
        let micros = now.duration_since(slot.started).as_micros() as u64;
        measured.latency.saturating_record(micros.max(1));
        if plan.count_progress {
            plan.progress.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Response::Error(error) = response {
        measured.error(error.code_name());
    }
    let acquired = matches!(response, Response::Acquired(_));
    let (next, work) = match (plan.workload, slot.next) {
        (Workload::Get, Step::Lock) | (Workload::Get, Step::Get) => (Step::Get, None),
        (_, Step::Lock) if acquired => {
            if plan.workload == Workload::Contended {
                let released = plan.last_release_ns.load(Ordering::Relaxed);
                let now_ns = now.duration_since(plan.epoch).as_nanos() as u64;
                if released > 0 && slot.started >= plan.warmup_end && now_ns > released {
                    measured
                        .hand_off
                        .saturating_record(((now_ns - released) / 1000).max(1));
                }
            }
            let work = (plan.workload == Workload::Scheduler).then(|| now + plan.work);
            (Step::Unlock, work)
        }
        (_, Step::Lock) => {
            if !matches!(response, Response::Error(_)) {
                measured.error("NOT_ACQUIRED".to_string());
            }
            (Step::Lock, None)
        }
        (_, Step::Unlock) => {
            if plan.workload == Workload::Scheduler && slot.started >= plan.warmup_end {
                measured.jobs += 1;
            }
            (Step::Lock, None)
        }
        (_, Step::Get) => (Step::Get, None),
    };
    slot.next = next;
    match work {
        // The runtime's timers tick in milliseconds: shorter work is done as work is,
        // by keeping a CPU busy (this connection's task) for that long.
        Some(until) if plan.work < Duration::from_millis(1) => {
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            Next::Send
        }
        Some(until) => {
            slot.busy = true;
            Next::Work(until)
        }
        None => Next::Send,
    }
}
