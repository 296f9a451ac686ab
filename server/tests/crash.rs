//! Crash tests: persistent locks survive `kill -9` of the real `kahu-server` binary
//! (issue 4, "Tests / Crash").
//!
//! The story of [`acknowledged_results_survive_sigkill_at_random_moments`]:
//!
//! 1. **Start** the binary on a fresh data directory with the smallest log segments and
//!    frequent snapshots, so segment rolls, snapshots and recovery all happen often.
//! 2. **Traffic.** [`CLIENTS`] clients, each on its own binary-protocol connection, keep up
//!    to [`REQUESTS_IN_FLIGHT_PER_CLIENT`] persistent requests in flight: LOCK on their own
//!    keys and sometimes on another client's, EXTEND and UNLOCK with the token, UNLOCK with
//!    a stale token (refused), GET. Every answer is checked against the model at once, and
//!    every acknowledged result is recorded in it.
//! 3. **Kill** the server with SIGKILL at a random moment, requests in flight.
//! 4. **Restart** it on the same data directory (after one kill in four, the first restart
//!    is itself killed within a few milliseconds, during or just after recovery) and
//!    **check** every key with GET against the model; then back to 2 with the surviving
//!    state.
//!
//! # The model
//! One request in flight per key, across all clients: a client claims a key in the shared
//! model before sending, and the claim ends when the answer is recorded. So every key has an
//! exact acknowledged state (free, or held by an owner with a token, plus when the request
//! that set its lease was sent) and at most one request sent but not answered. Leases are
//! [`TTL_MS`] (10 minutes), so none ends during the test. While the server runs, every
//! answer must match the model exactly. After a kill, the request in flight may or may not
//! have been applied, so GET must show one of:
//!
//! | in flight at the kill | acknowledged | GET may show |
//! |---|---|---|
//! | nothing, GET, EXTEND, stale UNLOCK | any | the acknowledged state |
//! | LOCK by `o` | free | free; or held by `o` with a token above every earlier token of the key and above every token known when the killed run started |
//! | LOCK by `o` | held | the acknowledged holder and token (a re-entry or BUSY changes neither) |
//! | UNLOCK by the holder | held | the acknowledged holder and token; or free |
//!
//! A held lock must also be persistent, have no waiters (nobody waits in this test), have at
//! most [`TTL_MS`] left and not end before the client's own count (request sent + ttl)
//! would. Every token granted by a run is above every token known when that run started.
//!
//! # Reading and reproducing a failure
//! A failure names the seed, the cycle and phase, the key, the model's state for it, what the
//! server answered, the data directory (kept for inspection) and the server's last stderr
//! lines. `KAHU_CRASH_SEED=<seed>` replays the same random choices (thread timing still
//! varies); `KAHU_CRASH_CYCLES=<n>` runs `n` kill cycles instead of [`CYCLES_DEFAULT`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_protocol::text::format_response;
use kahu_protocol::{ClientCodec, Durability, Extend, Get, Lock, Request, Response, Unlock};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Every lease in these tests: far longer than a test runs, so no lease ends during one.
const TTL_MS: u64 = 600_000;
const CLIENTS: usize = 4;
const KEYS_PER_CLIENT: usize = 8;
const KEYS: usize = CLIENTS * KEYS_PER_CLIENT;
const REQUESTS_IN_FLIGHT_PER_CLIENT: usize = 4;
/// Kill cycles when `KAHU_CRASH_CYCLES` is not set.
const CYCLES_DEFAULT: usize = 40;
/// Traffic before a kill, at most; one kill in ten comes almost at once instead.
const TRAFFIC_MS_MAX: u64 = 300;
/// After this share of the kills, one more restart is killed within
/// [`STARTUP_KILL_MS_MAX`] of its spawn: during recovery, or just after it.
const STARTUP_KILL_PERCENT: u64 = 25;
const STARTUP_KILL_MS_MAX: u64 = 60;
/// The smallest segment the server accepts, and a snapshot every half segment, so rolls,
/// snapshots and recovery across several segments happen within a few cycles.
const WAL_SEGMENT_BYTES: &str = "262144";
const SNAPSHOT_LOG_BYTES: &str = "131072";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest any reply, connect or join may take while the server runs.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const STDERR_LINES_KEPT: usize = 40;

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn acknowledged_results_survive_sigkill_at_random_moments() {
    let seed = env_number("KAHU_CRASH_SEED").unwrap_or_else(seed_from_clock);
    let cycles = env_number("KAHU_CRASH_CYCLES").map_or(CYCLES_DEFAULT, |n| n as usize);
    eprintln!(
        "crash test: seed {seed} (KAHU_CRASH_SEED), {cycles} kill cycles (KAHU_CRASH_CYCLES)"
    );
    let mut run = CrashRun::new(seed, cycles);
    let started = Instant::now();
    run.start_server(0);
    for cycle in 0..cycles {
        run.check_every_key(cycle);
        run.traffic_then_sigkill(cycle);
        if run.rng.percent(STARTUP_KILL_PERCENT) {
            run.sigkill_during_startup(cycle);
        }
        run.start_server(cycle);
    }
    run.check_every_key(cycles);
    run.finish(started.elapsed());
}

#[test]
fn an_acknowledged_persistent_lock_survives_sigkill_with_its_token_and_a_full_lease() {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let runtime = runtime();
    let owner = Bytes::from_static(b"survivor");
    let other = Bytes::from_static(b"latecomer");

    // Phase 1: a grant and a release, both acknowledged.
    let mut server =
        ServerProcess::start(data_dir.path()).unwrap_or_else(|error| panic!("{error}"));
    let (held_token, released_token) = runtime.block_on(async {
        let mut client = OneClient::connect(server.address).await;
        let held = client.acquired(lock("held", &owner)).await;
        let released = client.acquired(lock("released", &owner)).await;
        let reply = client.call(unlock("released", &owner, released)).await;
        assert!(
            matches!(&reply, Response::Released(r) if r.token == released),
            "UNLOCK released: {reply:?}"
        );
        (held, released)
    });

    // Phase 2: SIGKILL right after the acknowledgements, restart on the same directory.
    server.sigkill().unwrap_or_else(|error| panic!("{error}"));
    let server = ServerProcess::start(data_dir.path()).unwrap_or_else(|error| panic!("{error}"));

    // Phase 3: the grant is still held by its owner with its token and a lease counted in
    // full from the restart; the release stayed released; new tokens are larger.
    runtime.block_on(async {
        let mut client = OneClient::connect(server.address).await;
        let reply = client.call(get("held")).await;
        let since_restart = millis(server.spawned_at.elapsed());
        let Response::LockInfo(info) = &reply else {
            panic!("GET held after the restart: {reply:?}, want held by survivor with token {held_token}");
        };
        assert_eq!(
            (&info.owner, info.token, info.durability),
            (&owner, held_token, Durability::Persistent),
            "GET held after the restart: {reply:?}"
        );
        assert!(
            info.remaining_ms <= TTL_MS && info.remaining_ms + since_restart + 1 >= TTL_MS,
            "lease left after the restart is {} ms; want the full {TTL_MS} ms counted from the \
             restart, {since_restart} ms ago",
            info.remaining_ms
        );

        let reply = client.call(get("released")).await;
        assert!(matches!(reply, Response::NotHeld(_)), "GET released after the restart: {reply:?}");

        let reply = client.call(lock("held", &other)).await;
        assert!(
            matches!(&reply, Response::Busy(busy) if busy.token == held_token && busy.owner == owner),
            "LOCK held by another owner after the restart: {reply:?}"
        );

        let fresh = client.acquired(lock("fresh", &other)).await;
        assert!(
            fresh > held_token && fresh > released_token,
            "token {fresh} granted after the restart is not above {held_token} and \
             {released_token} granted before it"
        );
    });
}

// ---------------------------------------------------------------------------------------
// The crash run: phases of the long test
// ---------------------------------------------------------------------------------------

/// The long test's state: the data directory, the running server, the model, the seed.
struct CrashRun {
    seed: u64,
    cycles: usize,
    rng: Rng,
    runtime: tokio::runtime::Runtime,
    /// Declared before `data_dir` so the process is killed before the directory goes.
    server: Option<ServerProcess>,
    data_dir: Option<tempfile::TempDir>,
    model: Arc<Mutex<Model>>,
}

impl CrashRun {
    fn new(seed: u64, cycles: usize) -> CrashRun {
        let data_dir = tempfile::Builder::new()
            .prefix("kahu-crash-")
            .tempdir()
            .expect("temporary data directory");
        CrashRun {
            seed,
            cycles,
            rng: Rng::new(seed),
            runtime: runtime(),
            server: None,
            data_dir: Some(data_dir),
            model: Arc::new(Mutex::new(Model::new())),
        }
    }

    fn start_server(&mut self, cycle: usize) {
        let path = self
            .data_dir
            .as_ref()
            .expect("data dir")
            .path()
            .to_path_buf();
        match ServerProcess::start(&path) {
            Ok(server) => self.server = Some(server),
            Err(error) => self.fail(cycle, "start (recovery)", &error),
        }
    }

    fn server(&self) -> &ServerProcess {
        self.server.as_ref().expect("a server is running")
    }

    /// After a (re)start: GET every key; each must show a state the model allows. Then the
    /// model takes what the server showed, and the next run's tokens must exceed all known.
    fn check_every_key(&mut self, cycle: usize) {
        let address = self.server().address;
        let replies = self.runtime.block_on(get_every_key(address));
        let result = replies.and_then(|replies| lock_model(&self.model).recover(&replies));
        if let Err(error) = result {
            self.fail(cycle, "GET every key after the restart", &error);
        }
    }

    /// Runs the clients for a random time, then SIGKILLs the server with requests in flight.
    fn traffic_then_sigkill(&mut self, cycle: usize) {
        let address = self.server().address;
        let killing = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let driver = Driver {
                    client,
                    model: self.model.clone(),
                    killing: killing.clone(),
                    rng: self.rng.fork(client as u64),
                };
                self.runtime.spawn(driver.run(address))
            })
            .collect();
        let traffic_ms = if self.rng.percent(10) {
            self.rng.below(5)
        } else {
            20 + self.rng.below(TRAFFIC_MS_MAX - 20)
        };
        std::thread::sleep(Duration::from_millis(traffic_ms));

        killing.store(true, Ordering::SeqCst);
        let killed = self.server.as_mut().expect("a server is running").sigkill();
        let joined = self.runtime.block_on(async {
            let mut errors = Vec::new();
            for (client, handle) in clients.into_iter().enumerate() {
                match tokio::time::timeout(STEP_TIMEOUT, handle).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(error))) => errors.push(format!("client {client}:\n{error}")),
                    Ok(Err(join_error)) => {
                        errors.push(format!("client {client} panicked: {join_error}"))
                    }
                    Err(_) => errors.push(format!("client {client} did not stop after the kill")),
                }
            }
            errors
        });
        lock_model(&self.model).count_in_flight_at_kill();
        if let Err(error) = killed {
            self.fail(cycle, "SIGKILL", &error);
        }
        if !joined.is_empty() {
            let phase = format!("traffic ({traffic_ms} ms before the kill)");
            self.fail(cycle, &phase, &joined.join("\n"));
        }
    }

    /// Spawns the server and SIGKILLs it a few milliseconds later, listening or not.
    fn sigkill_during_startup(&mut self, cycle: usize) {
        let path = self
            .data_dir
            .as_ref()
            .expect("data dir")
            .path()
            .to_path_buf();
        let delay = Duration::from_millis(self.rng.below(STARTUP_KILL_MS_MAX));
        let killed = ServerProcess::spawn(&path).and_then(|(mut server, _listening)| {
            std::thread::sleep(delay);
            let killed = server.sigkill();
            self.server = Some(server);
            killed
        });
        lock_model(&self.model).counts.startup_kills += 1;
        if let Err(error) = killed {
            let phase = format!("SIGKILL {} ms after a restart", millis(delay));
            self.fail(cycle, &phase, &error);
        }
    }

    fn finish(&mut self, elapsed: Duration) {
        let model = lock_model(&self.model);
        let counts = &model.counts;
        let files = data_dir_files(self.data_dir.as_ref().expect("data dir").path());
        eprintln!(
            "crash test: {} cycles ({} more kills during startup) in {:.1} s; acknowledged: {} \
             grants, {} re-entries, {} releases, {} extends, {} busy, {} stale unlocks refused, \
             {} gets; in flight at the kills: {} requests, of which LOCK/UNLOCK applied {} and \
             not applied {}; data dir now holds {files}",
            self.cycles,
            counts.startup_kills,
            elapsed.as_secs_f64(),
            counts.grants,
            counts.reentries,
            counts.releases,
            counts.extends,
            counts.busy,
            counts.stale_refused,
            counts.gets,
            counts.in_flight_at_kill,
            counts.in_flight_applied,
            counts.in_flight_not_applied,
        );
        assert!(
            counts.grants > 0 && counts.releases > 0,
            "seed {}: the clients got no grant or no release acknowledged, so nothing was tested",
            self.seed
        );
    }

    /// Panics with everything needed to understand the failure, keeping the data directory.
    fn fail(&mut self, cycle: usize, phase: &str, problem: &str) -> ! {
        let stderr = self
            .server
            .as_ref()
            .map_or_else(String::new, ServerProcess::stderr_tail);
        let kept = self.data_dir.take().map_or_else(
            || "(gone)".to_string(),
            |dir| dir.keep().display().to_string(),
        );
        panic!(
            "crash test failed\n  seed:      {seed} (rerun with KAHU_CRASH_SEED={seed} \
             KAHU_CRASH_CYCLES={cycles})\n  \
             cycle:     {cycle} of {cycles}, phase: {phase}\n  data dir:  {kept} (kept)\n  \
             problem:\n{problem}\n  server stderr (last lines):\n{stderr}",
            seed = self.seed,
            cycles = self.cycles,
        )
    }
}

async fn get_every_key(address: SocketAddr) -> Result<Vec<Observed>, String> {
    let stream = timed("connect for the check", TcpStream::connect(address))
        .await?
        .map_err(|error| format!("cannot connect for the check: {error}"))?;
    stream
        .set_nodelay(true)
        .map_err(|error| error.to_string())?;
    let mut framed = Framed::new(stream, ClientCodec::default());
    for key in 0..KEYS {
        let request = Request::Get(Get { key: key_name(key) });
        framed
            .feed((key as u32 + 1, &request))
            .await
            .map_err(|error| format!("cannot send GET: {error}"))?;
    }
    SinkExt::<(u32, &Request)>::flush(&mut framed)
        .await
        .map_err(|error| format!("cannot send GETs: {error}"))?;
    let mut observed: Vec<Option<Observed>> = vec![None; KEYS];
    for _ in 0..KEYS {
        let (id, response) = match timed("a GET reply", framed.next()).await? {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => return Err(format!("bad GET reply: {error}")),
            None => return Err("the server closed the connection during the check".into()),
        };
        let key = (id as usize)
            .checked_sub(1)
            .filter(|&key| key < KEYS && observed[key].is_none())
            .ok_or_else(|| format!("reply to unknown or answered request id {id}: {response:?}"))?;
        observed[key] = Some(Observed {
            response,
            received_at: Instant::now(),
        });
    }
    Ok(observed
        .into_iter()
        .map(|o| o.expect("every key answered"))
        .collect())
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

/// An acknowledged grant.
#[derive(Clone, Copy, Debug)]
struct Grant {
    owner: usize,
    token: u64,
    /// When the request that last set the lease (grant, re-entry, extend) was sent: the
    /// client's own count, which the server's lease must not end before.
    lease_from: Instant,
}

/// A request the model knows how to judge. Owners are client numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lock {
        owner: usize,
    },
    Unlock {
        owner: usize,
        token: u64,
    },
    /// UNLOCK by the holder naming a token that is not its grant's: must be refused.
    UnlockStale {
        owner: usize,
        token: u64,
    },
    Extend {
        owner: usize,
        token: u64,
    },
    Get,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    op: Op,
    at: Instant,
}

#[derive(Debug)]
struct KeyState {
    holder: Option<Grant>,
    /// The highest token known for this key.
    last_token: u64,
    /// The one request on this key sent and not yet answered.
    in_flight: Option<Sent>,
    /// The last request that changed this key, for failure messages.
    last_change: Option<Change>,
}

#[derive(Clone, Copy, Debug)]
struct Change {
    op: Op,
    /// When its answer arrived, or when a restart showed it had been applied.
    at: Instant,
    acknowledged: bool,
}

#[derive(Debug, Default)]
struct Counts {
    grants: u64,
    reentries: u64,
    releases: u64,
    extends: u64,
    busy: u64,
    stale_refused: u64,
    gets: u64,
    in_flight_at_kill: u64,
    in_flight_applied: u64,
    in_flight_not_applied: u64,
    startup_kills: u64,
}

/// What one GET showed, and when its answer arrived (for the lease bounds).
#[derive(Clone, Debug)]
struct Observed {
    response: Response,
    received_at: Instant,
}

#[derive(Debug)]
struct Model {
    keys: Vec<KeyState>,
    /// Every token known when the current run of the server started: every token it
    /// grants must be above this.
    run_floor: u64,
    /// The highest token known.
    tokens_max: u64,
    counts: Counts,
    test_started: Instant,
}

fn lock_model(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Model {
    fn new() -> Model {
        Model {
            keys: (0..KEYS)
                .map(|_| KeyState {
                    holder: None,
                    last_token: 0,
                    in_flight: None,
                    last_change: None,
                })
                .collect(),
            run_floor: 0,
            tokens_max: 0,
            counts: Counts::default(),
            test_started: Instant::now(),
        }
    }

    /// Claims a key for `client` and picks a request for it, or `None` if every key tried
    /// has a request in flight already.
    fn claim(&mut self, client: usize, rng: &mut Rng) -> Option<(usize, Op)> {
        for _ in 0..8 {
            let key = self.pick_key(client, rng);
            let state = &mut self.keys[key];
            if state.in_flight.is_some() {
                continue;
            }
            let roll = rng.below(100);
            let op = match state.holder {
                Some(grant) if grant.owner == client => match roll {
                    0..30 => Op::Unlock {
                        owner: client,
                        token: grant.token,
                    },
                    30..60 => Op::Extend {
                        owner: client,
                        token: grant.token,
                    },
                    60..75 => Op::Lock { owner: client },
                    75..85 if grant.token > 1 => Op::UnlockStale {
                        owner: client,
                        token: grant.token - 1,
                    },
                    _ => Op::Get,
                },
                _ if roll < 85 => Op::Lock { owner: client },
                _ => Op::Get,
            };
            state.in_flight = Some(Sent {
                op,
                at: Instant::now(),
            });
            return Some((key, op));
        }
        None
    }

    /// Mostly the client's own keys; sometimes one it holds of another client's (so such
    /// holds are released again and the traffic does not settle into BUSY answers); sometimes
    /// any key.
    fn pick_key(&self, client: usize, rng: &mut Rng) -> usize {
        let roll = rng.below(100);
        if roll < 20 {
            let foreign_held: Vec<usize> = (0..KEYS)
                .filter(|&key| key / KEYS_PER_CLIENT != client)
                .filter(|&key| {
                    self.keys[key]
                        .holder
                        .is_some_and(|grant| grant.owner == client)
                })
                .collect();
            if !foreign_held.is_empty() {
                return foreign_held[rng.below(foreign_held.len() as u64) as usize];
            }
        }
        if roll < 35 {
            return rng.below(KEYS as u64) as usize;
        }
        client * KEYS_PER_CLIENT + rng.below(KEYS_PER_CLIENT as u64) as usize
    }

    /// Records the answer to the request in flight on `key`, which must match the model
    /// exactly: the server is running and no other request on this key is in flight.
    fn answer(
        &mut self,
        key: usize,
        response: &Response,
        received_at: Instant,
    ) -> Result<(), String> {
        let sent = self.keys[key]
            .in_flight
            .expect("an answered request was in flight");
        let judged = self.judge_answer(key, sent, response, received_at);
        if let Err(problem) = judged {
            return Err(self.explain(key, &op_request(key, sent.op), response, &problem));
        }
        self.keys[key].in_flight = None;
        Ok(())
    }

    fn judge_answer(
        &mut self,
        key: usize,
        sent: Sent,
        response: &Response,
        received_at: Instant,
    ) -> Result<(), String> {
        let run_floor = self.run_floor;
        let state = &mut self.keys[key];
        let counts = &mut self.counts;
        match (sent.op, state.holder.as_mut(), response) {
            (Op::Lock { owner }, None, Response::Acquired(acquired)) if !acquired.reentered => {
                check_ttl(acquired.ttl_ms)?;
                check_new_token(acquired.token, state.last_token, run_floor)?;
                state.holder = Some(Grant {
                    owner,
                    token: acquired.token,
                    lease_from: sent.at,
                });
                state.last_token = acquired.token;
                self.tokens_max = self.tokens_max.max(acquired.token);
                counts.grants += 1;
                state.last_change = Some(Change {
                    op: sent.op,
                    at: received_at,
                    acknowledged: true,
                });
            }
            (Op::Lock { owner }, Some(grant), Response::Acquired(acquired))
                if grant.owner == owner && acquired.reentered =>
            {
                check_ttl(acquired.ttl_ms)?;
                check_same_token(acquired.token, grant.token)?;
                grant.lease_from = sent.at;
                counts.reentries += 1;
                state.last_change = Some(Change {
                    op: sent.op,
                    at: received_at,
                    acknowledged: true,
                });
            }
            (Op::Lock { owner }, Some(grant), Response::Busy(busy)) if grant.owner != owner => {
                check_holder(
                    grant,
                    &busy.owner,
                    busy.token,
                    busy.remaining_ms,
                    received_at,
                )?;
                counts.busy += 1;
            }
            (Op::Unlock { owner, token }, Some(grant), Response::Released(released))
                if grant.owner == owner && grant.token == token =>
            {
                check_same_token(released.token, grant.token)?;
                state.holder = None;
                counts.releases += 1;
                state.last_change = Some(Change {
                    op: sent.op,
                    at: received_at,
                    acknowledged: true,
                });
            }
            (Op::UnlockStale { owner, .. }, Some(grant), Response::NotOwner(holder))
                if grant.owner == owner =>
            {
                check_holder(
                    grant,
                    &holder.owner,
                    holder.token,
                    holder.remaining_ms,
                    received_at,
                )?;
                counts.stale_refused += 1;
            }
            (Op::Extend { owner, token }, Some(grant), Response::Extended(extended))
                if grant.owner == owner && grant.token == token =>
            {
                check_ttl(extended.ttl_ms)?;
                check_same_token(extended.token, grant.token)?;
                grant.lease_from = sent.at;
                counts.extends += 1;
                state.last_change = Some(Change {
                    op: sent.op,
                    at: received_at,
                    acknowledged: true,
                });
            }
            (Op::Get, holder, response) => {
                check_get(holder.as_deref(), state.last_token, response, received_at)?;
                counts.gets += 1;
            }
            (op, holder, _) => return Err(expected_answer(op, holder.as_deref())),
        }
        Ok(())
    }

    /// Counts the requests left in flight by a kill.
    fn count_in_flight_at_kill(&mut self) {
        let in_flight = self
            .keys
            .iter()
            .filter(|state| state.in_flight.is_some())
            .count();
        self.counts.in_flight_at_kill += in_flight as u64;
    }

    /// After a restart: each key's GET must show a state the model allows (see the module
    /// doc); the model then takes it, and the new run's floor is every token known.
    fn recover(&mut self, observed: &[Observed]) -> Result<(), String> {
        let mut problems = Vec::new();
        for (key, seen) in observed.iter().enumerate() {
            match self.judge_recovered(key, seen) {
                Ok(holder) => {
                    let state = &mut self.keys[key];
                    let changed = match (state.holder, holder) {
                        (Some(before), Some(after)) => before.token != after.token,
                        (before, after) => before.is_some() != after.is_some(),
                    };
                    if let Some(sent) = state.in_flight.filter(|_| changed) {
                        state.last_change = Some(Change {
                            op: sent.op,
                            at: seen.received_at,
                            acknowledged: false,
                        });
                    }
                    if let Some(grant) = holder {
                        state.last_token = state.last_token.max(grant.token);
                        self.tokens_max = self.tokens_max.max(grant.token);
                    }
                    state.holder = holder;
                    state.in_flight = None;
                }
                Err(problem) => {
                    let request = Request::Get(Get { key: key_name(key) });
                    problems.push(self.explain(key, &request, &seen.response, &problem));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        self.run_floor = self.tokens_max;
        Ok(())
    }

    /// The holder the model takes from a GET after a restart, if that GET is allowed.
    fn judge_recovered(&mut self, key: usize, seen: &Observed) -> Result<Option<Grant>, String> {
        let state = &self.keys[key];
        let in_flight = state.in_flight.map(|sent| sent.op);
        // The requests in flight whose effect GET can tell apart.
        let applied = matches!(
            (in_flight, state.holder),
            (Some(Op::Lock { .. }), None) | (Some(Op::Unlock { .. }), Some(_))
        );
        let recovered = check_get(
            state.holder.as_ref(),
            state.last_token,
            &seen.response,
            seen.received_at,
        );
        let Err(as_acknowledged) = recovered else {
            if applied {
                self.counts.in_flight_not_applied += 1;
            }
            return Ok(state.holder);
        };
        // Not the acknowledged state: only the request in flight, applied, can explain it.
        let sent = state.in_flight.filter(|_| applied).ok_or_else(|| {
            format!("{as_acknowledged}: an acknowledged result was lost or changed")
        })?;
        let holder = match (sent.op, &seen.response) {
            (Op::Unlock { .. }, Response::NotHeld(_)) => {
                check_get(None, state.last_token, &seen.response, seen.received_at)?;
                None
            }
            (Op::Lock { .. }, Response::LockInfo(info)) if info.token <= state.last_token => {
                return Err(format!(
                    "{as_acknowledged}; and token {} is no new grant (this key's tokens already \
                     reached {}), so the LOCK in flight does not explain it either: an \
                     acknowledged result was lost, or a token went backwards",
                    info.token, state.last_token
                ));
            }
            (Op::Lock { owner }, Response::LockInfo(info)) if info.owner == owner_name(owner) => {
                check_new_token(info.token, state.last_token, self.run_floor).map_err(
                    |problem| format!("the LOCK in flight seems applied, but {problem}"),
                )?;
                let grant = Grant {
                    owner,
                    token: info.token,
                    lease_from: sent.at,
                };
                check_holder(
                    &grant,
                    &info.owner,
                    info.token,
                    info.remaining_ms,
                    seen.received_at,
                )?;
                check_info_fields(info)?;
                Some(grant)
            }
            _ => {
                return Err(format!(
                    "{as_acknowledged}, and the request in flight does not explain it either"
                ))
            }
        };
        self.counts.in_flight_applied += 1;
        Ok(holder)
    }

    /// A failure message about one key: the model's state and what the server answered.
    fn explain(&self, key: usize, request: &Request, response: &Response, problem: &str) -> String {
        let state = &self.keys[key];
        let at = |instant: Instant| {
            format!(
                "t+{:.3}s",
                instant
                    .saturating_duration_since(self.test_started)
                    .as_secs_f64()
            )
        };
        let acknowledged = match state.holder {
            Some(grant) => format!(
                "held by {} with token {} (lease counted from {})",
                display_owner(grant.owner),
                grant.token,
                at(grant.lease_from)
            ),
            None => "free".to_string(),
        };
        let in_flight = match state.in_flight {
            Some(sent) => format!("{} (sent {})", sent.op, at(sent.at)),
            None => "nothing".to_string(),
        };
        let last_change = match state.last_change {
            Some(change) if change.acknowledged => {
                format!("{}, acknowledged {}", change.op, at(change.at))
            }
            Some(change) => format!(
                "{}, in flight at a kill and found applied {}",
                change.op,
                at(change.at)
            ),
            None => "none".to_string(),
        };
        format!(
            "    key {key_name}:\n      model: {acknowledged}; in flight: {in_flight}; last \
             change: {last_change}; highest token of the key {last}; tokens known when this run \
             started <= {floor}\n      request: {request:?}\n      answer:  {answer}\n      problem: {problem}",
            key_name = String::from_utf8_lossy(&key_name(key)),
            last = state.last_token,
            floor = self.run_floor,
            answer = format_response(request, response),
        )
    }
}

/// A GET answer against an expected holder (`None`: free): same owner and token, and a
/// sound lease; or NOT_HELD whose last token is not above the key's highest known.
fn check_get(
    holder: Option<&Grant>,
    last_token: u64,
    response: &Response,
    received_at: Instant,
) -> Result<(), String> {
    match (holder, response) {
        (Some(grant), Response::LockInfo(info)) => {
            check_holder(
                grant,
                &info.owner,
                info.token,
                info.remaining_ms,
                received_at,
            )?;
            check_info_fields(info)
        }
        (None, Response::NotHeld(not_held)) => {
            if not_held.last_token > last_token {
                return Err(format!(
                    "NOT_HELD names last token {}, above {last_token}, the highest granted for \
                     this key",
                    not_held.last_token
                ));
            }
            Ok(())
        }
        (Some(grant), _) => Err(format!(
            "want held by {} with token {}",
            display_owner(grant.owner),
            grant.token
        )),
        (None, _) => Err("want NOT_HELD".into()),
    }
}

/// What the model expects as the answer to `op` on a key held by `holder`.
fn expected_answer(op: Op, holder: Option<&Grant>) -> String {
    let holder_text =
        |grant: &Grant| format!("owner={} token={}", display_owner(grant.owner), grant.token);
    match (op, holder) {
        (Op::Lock { .. }, None) => "want ACQUIRED with a new token".into(),
        (Op::Lock { owner }, Some(grant)) if grant.owner == owner => {
            format!("want ACQUIRED reentered=true token={}", grant.token)
        }
        (Op::Lock { .. }, Some(grant)) => format!("want BUSY {}", holder_text(grant)),
        (Op::Unlock { token, .. }, _) => format!("want RELEASED token={token}"),
        (Op::UnlockStale { .. }, Some(grant)) => format!("want NOT_OWNER {}", holder_text(grant)),
        (Op::Extend { token, .. }, _) => format!("want EXTENDED token={token}"),
        (op, holder) => format!("the test sent {op} on a key held by {holder:?}: a test bug"),
    }
}

fn check_info_fields(info: &kahu_protocol::LockInfo) -> Result<(), String> {
    if info.durability != Durability::Persistent {
        return Err("every lock in this test is persistent".into());
    }
    if info.waiters != 0 {
        return Err("nobody waits in this test (wait_ms is 0)".into());
    }
    Ok(())
}

/// The holder the server named (in BUSY, NOT_OWNER or GET) against the model's grant.
fn check_holder(
    grant: &Grant,
    owner: &Bytes,
    token: u64,
    remaining_ms: u64,
    received_at: Instant,
) -> Result<(), String> {
    if *owner != owner_name(grant.owner) || token != grant.token {
        return Err(format!(
            "want held by {} with token {}: two holders, or a lost grant",
            display_owner(grant.owner),
            grant.token
        ));
    }
    if remaining_ms > TTL_MS {
        return Err(format!(
            "{remaining_ms} ms of lease left is more than the ttl, {TTL_MS} ms"
        ));
    }
    // The server's lease ends at most `remaining_ms` (+1, rounding) after the answer was
    // received; it must not end before the client's own count, sent + ttl.
    let client_deadline = grant.lease_from + Duration::from_millis(TTL_MS);
    let server_end_latest = received_at + Duration::from_millis(remaining_ms + 1);
    if server_end_latest < client_deadline {
        return Err(format!(
            "the lease ends early: {remaining_ms} ms left, {} ms before the client's own count \
             (request sent + {TTL_MS} ms) ends",
            millis(client_deadline - server_end_latest)
        ));
    }
    Ok(())
}

fn check_new_token(token: u64, key_last: u64, run_floor: u64) -> Result<(), String> {
    if token <= key_last {
        return Err(format!(
            "token {token} is not above {key_last}, granted earlier for this key"
        ));
    }
    if token <= run_floor {
        return Err(format!(
            "token {token} is not above {run_floor}, known before this run of the server started"
        ));
    }
    Ok(())
}

fn check_same_token(token: u64, want: u64) -> Result<(), String> {
    if token == want {
        Ok(())
    } else {
        Err(format!("token {token}, want the grant's token {want}"))
    }
}

fn check_ttl(ttl_ms: u64) -> Result<(), String> {
    if ttl_ms == TTL_MS {
        Ok(())
    } else {
        Err(format!("ttl_ms {ttl_ms}, want the {TTL_MS} asked for"))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Lock { owner } => write!(f, "LOCK by {}", display_owner(owner)),
            Op::Unlock { owner, token } => {
                write!(f, "UNLOCK by {} token {token}", display_owner(owner))
            }
            Op::UnlockStale { owner, token } => {
                write!(
                    f,
                    "UNLOCK by {} with stale token {token}",
                    display_owner(owner)
                )
            }
            Op::Extend { owner, token } => {
                write!(f, "EXTEND by {} token {token}", display_owner(owner))
            }
            Op::Get => write!(f, "GET"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------

/// One client: a connection keeping up to [`REQUESTS_IN_FLIGHT_PER_CLIENT`] requests in
/// flight, each on a key it claimed in the model, until the server is killed.
struct Driver {
    client: usize,
    model: Arc<Mutex<Model>>,
    killing: Arc<AtomicBool>,
    rng: Rng,
}

impl Driver {
    /// `Ok` when the connection ended because of the kill; `Err` for a wrong answer, or a
    /// connection lost or silent while the server should be running.
    async fn run(mut self, address: SocketAddr) -> Result<(), String> {
        match self.traffic(address).await {
            Ok(()) => Ok(()),
            Err(Stop::Killed(_)) if self.killing.load(Ordering::SeqCst) => Ok(()),
            Err(Stop::Killed(error)) => Err(format!("connection failed before the kill: {error}")),
            Err(Stop::Wrong(error)) => Err(error),
        }
    }

    async fn traffic(&mut self, address: SocketAddr) -> Result<(), Stop> {
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| Stop::Killed("connect timed out".into()))?
            .map_err(|error| Stop::Killed(format!("connect: {error}")))?;
        stream
            .set_nodelay(true)
            .map_err(|error| Stop::Killed(error.to_string()))?;
        let mut framed = Framed::new(stream, ClientCodec::default());
        let mut outstanding: HashMap<u32, usize> = HashMap::new();
        let mut next_id: u32 = 1;
        loop {
            while outstanding.len() < REQUESTS_IN_FLIGHT_PER_CLIENT {
                let Some((key, op)) = lock_model(&self.model).claim(self.client, &mut self.rng)
                else {
                    break;
                };
                outstanding.insert(next_id, key);
                let request = op_request(key, op);
                framed
                    .feed((next_id, &request))
                    .await
                    .map_err(|error| Stop::Killed(format!("send: {error}")))?;
                next_id += 1;
            }
            SinkExt::<(u32, &Request)>::flush(&mut framed)
                .await
                .map_err(|error| Stop::Killed(format!("send: {error}")))?;
            if outstanding.is_empty() {
                // Every key tried is busy with another client's request.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let reply = tokio::time::timeout(STEP_TIMEOUT, framed.next())
                .await
                .map_err(|_| Stop::Killed(format!("no reply within {STEP_TIMEOUT:?}")))?;
            let (id, response) = match reply {
                Some(Ok(reply)) => reply,
                Some(Err(error)) => return Err(Stop::Killed(format!("receive: {error}"))),
                None => return Err(Stop::Killed("the server closed the connection".into())),
            };
            let received_at = Instant::now();
            let key = outstanding.remove(&id).ok_or_else(|| {
                Stop::Wrong(format!("reply to unknown request id {id}: {response:?}"))
            })?;
            lock_model(&self.model)
                .answer(key, &response, received_at)
                .map_err(Stop::Wrong)?;
        }
    }
}

enum Stop {
    /// The connection failed: expected after the kill, a failure before it.
    Killed(String),
    /// The server answered something the model does not allow.
    Wrong(String),
}

fn op_request(key: usize, op: Op) -> Request {
    let key = key_name(key);
    match op {
        Op::Lock { owner } => Request::Lock(Lock {
            key,
            owner: owner_name(owner),
            ttl_ms: TTL_MS,
            wait_ms: 0,
            durability: Durability::Persistent,
            if_not_held: false,
        }),
        Op::Unlock { owner, token } | Op::UnlockStale { owner, token } => Request::Unlock(Unlock {
            key,
            owner: owner_name(owner),
            token: Some(token),
        }),
        Op::Extend { owner, token } => Request::Extend(Extend {
            key,
            owner: owner_name(owner),
            ttl_ms: TTL_MS,
            token: Some(token),
        }),
        Op::Get => Request::Get(Get { key }),
    }
}

/// Key `n` belongs to client `n / KEYS_PER_CLIENT`.
fn key_name(key: usize) -> Bytes {
    Bytes::from(format!(
        "crash-c{}-k{}",
        key / KEYS_PER_CLIENT,
        key % KEYS_PER_CLIENT
    ))
}

fn owner_name(client: usize) -> Bytes {
    Bytes::from(format!("crash-client-{client}"))
}

fn display_owner(client: usize) -> String {
    format!("crash-client-{client}")
}

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// One run of the real binary. Dropping it kills the process (SIGKILL) and reaps it, so no
/// server outlives a test, also when the test panics.
struct ServerProcess {
    child: Child,
    address: SocketAddr,
    spawned_at: Instant,
    /// The last lines the server wrote to stderr, for failure messages.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts the binary on 127.0.0.1 port 0 and reads the address from its listening line
    /// (as `tests/binary.rs` does).
    fn start(data_dir: &Path) -> Result<ServerProcess, String> {
        let (mut server, listening) = ServerProcess::spawn(data_dir)?;
        let line = listening.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        let address = line
            .trim()
            .strip_prefix("kahu-server listening on ")
            .and_then(|address| address.parse().ok());
        match address {
            Some(address) => {
                server.address = address;
                Ok(server)
            }
            None => {
                let status = server.exit_status_soon();
                Err(format!(
                    "kahu-server did not print its listening line within {STARTUP_TIMEOUT:?} \
                     (first line {line:?}, {status}); its stderr:\n{}",
                    server.stderr_tail()
                ))
            }
        }
    }

    /// Spawns the binary; the receiver gets its first stdout line (empty if it exits
    /// first). Both output pipes are drained for the life of the process, so the server
    /// never blocks on a full pipe.
    fn spawn(
        data_dir: &Path,
    ) -> Result<(ServerProcess, std::sync::mpsc::Receiver<String>), String> {
        let spawned_at = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kahu-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--log-level",
                "warn",
            ])
            .args(["--wal-segment-bytes", WAL_SEGMENT_BYTES])
            .args(["--snapshot-log-bytes", SNAPSHOT_LOG_BYTES])
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot spawn kahu-server: {error}"))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut lines = lines.lock().unwrap_or_else(|poison| poison.into_inner());
                if lines.len() == STDERR_LINES_KEPT {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let server = ServerProcess {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            spawned_at,
            stderr,
        };
        Ok((server, receiver))
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap the process. An error if it
    /// had already exited: a crash the test did not cause.
    fn sigkill(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                return Err(format!(
                    "kahu-server exited by itself ({status}) before the kill; its stderr:\n{}",
                    self.stderr_tail()
                ))
            }
            Err(error) => return Err(format!("cannot query kahu-server: {error}")),
        }
        self.child
            .kill()
            .map_err(|error| format!("cannot kill kahu-server: {error}"))?;
        self.child
            .wait()
            .map_err(|error| format!("cannot reap kahu-server: {error}"))?;
        Ok(())
    }

    /// How a server that failed to start ended, waiting a little for it to exit.
    fn exit_status_soon(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the stderr thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return format!("exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        "still running".to_string()
    }

    fn stderr_tail(&self) -> String {
        let lines = self
            .stderr
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if lines.is_empty() {
            return "    (nothing)".to_string();
        }
        lines
            .iter()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// A client for the short test: one request at a time, every wait bounded.
struct OneClient {
    framed: Framed<TcpStream, ClientCodec>,
    next_id: u32,
}

impl OneClient {
    async fn connect(address: SocketAddr) -> OneClient {
        let stream = timed("connect", TcpStream::connect(address))
            .await
            .unwrap_or_else(|error| panic!("{error}"))
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        OneClient {
            framed: Framed::new(stream, ClientCodec::default()),
            next_id: 1,
        }
    }

    async fn call(&mut self, request: Request) -> Response {
        let id = self.next_id;
        self.next_id += 1;
        self.framed.send((id, &request)).await.expect("send");
        let reply = timed("a reply", self.framed.next())
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let (reply_id, response) = reply
            .expect("a reply before close")
            .expect("a decodable reply");
        assert_eq!(reply_id, id, "reply to another request: {response:?}");
        response
    }

    /// Sends a LOCK that must be granted afresh; returns the token.
    async fn acquired(&mut self, request: Request) -> u64 {
        let reply = self.call(request.clone()).await;
        match &reply {
            Response::Acquired(acquired) if !acquired.reentered && acquired.ttl_ms == TTL_MS => {
                acquired.token
            }
            _ => panic!("{request:?} answered {}", format_response(&request, &reply)),
        }
    }
}

fn lock(key: &'static str, owner: &Bytes) -> Request {
    Request::Lock(Lock {
        key: Bytes::from_static(key.as_bytes()),
        owner: owner.clone(),
        ttl_ms: TTL_MS,
        wait_ms: 0,
        durability: Durability::Persistent,
        if_not_held: false,
    })
}

fn unlock(key: &'static str, owner: &Bytes, token: u64) -> Request {
    Request::Unlock(Unlock {
        key: Bytes::from_static(key.as_bytes()),
        owner: owner.clone(),
        token: Some(token),
    })
}

fn get(key: &'static str) -> Request {
    Request::Get(Get {
        key: Bytes::from_static(key.as_bytes()),
    })
}

async fn timed<T>(what: &str, future: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| format!("timed out after {STEP_TIMEOUT:?}: {what}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// A decimal (or `0x` hexadecimal) number from the environment.
fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// What the data directory holds, by file extension (to show rolls and snapshots happened).
fn data_dir_files(path: &Path) -> String {
    let mut by_extension: std::collections::BTreeMap<String, usize> = Default::default();
    let mut directories = vec![path.to_path_buf()];
    while let Some(directory) = directories.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                directories.push(path);
            } else {
                let extension = path
                    .extension()
                    .map_or("(none)".to_string(), |e| e.to_string_lossy().into_owned());
                *by_extension.entry(extension).or_default() += 1;
            }
        }
    }
    by_extension
        .iter()
        .map(|(extension, count)| format!("{count} .{extension}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// xorshift64* seeded through splitmix64, so every seed (0 too) gives a good stream.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent stream for one client of one cycle.
    fn fork(&mut self, stream: u64) -> Rng {
        Rng::new(self.next() ^ stream)
    }
}
