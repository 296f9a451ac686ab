//! How `kahu-cli` shows a result, and which exit code it gets.
//!
//! Every result is one line on stdout: readable text, or one JSON object (`--format json`)
//! with camelCase fields; the exceptions are `--cluster-status` as text, a table, and
//! `--add-node` / `--remove-node` as text, a line per shard (`shard 0: voters 1,2,3,4`). The
//! shapes (documented in the README and checked by `tests/cli.rs` and `tests/cluster.rs`):
//!
//! ```text
//! lock    {"resource","isAcquired","fencingToken","owner","expiresMs","status","holder"}
//! unlock  {"resource","isReleased","fencingToken","owner","status","holder"}
//! extend  {"resource","isExtended","fencingToken","owner","expiresMs","status","holder"}
//! get     {"resource","isLocked","owner","fencingToken","expiresMs","waiters","durability",
//!          "lastFencingToken"}
//! ping    {"pong","roundTripUs"}
//! info    {"server","version","shardCount","limits","stats"}
//! cluster-status {"node","server","shardCount","shards":[{"shard","isLeader","leader","term",
//!          "commitIndex","appliedIndex","lastIndex"}]}
//! members {"action":"add"|"remove","node","shards":[{"shard","voters":[...]}]}
//! error   {"error":{"code","class","message"}}, plus "resource" and the command's boolean
//!         (false) when the command names a lock
//! ```
//!
//! Absent values are `null`, never missing. `holder` is `{"owner","fencingToken","expiresMs"}`
//! when the server named the lock's current holder. The command's boolean is present even in
//! an error object, so `jq .isAcquired` prints `false` (never `null`) when the lock was not
//! taken for any reason.
//!
//! Text-mode errors go to stderr (`error: CODE (class): message`), except in the shell,
//! where everything goes to stdout in order.

use std::io::Write;
use std::time::Duration;

use kahu_client::{
    Error, ExtendOutcome, HelloOk, Holder, InfoReply, LockGuard, LockState, UnlockOutcome,
};
use kahu_protocol::text::display_bytes;
use serde::Serialize;

use crate::args::Format;
use crate::cluster_status::ClusterStatus;

/// The process exit codes, as documented in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Done = 0,
    /// Not acquired, not owner, not held.
    Refused = 1,
    Usage = 2,
    CannotConnect = 3,
    /// The server refused the request, the connection broke, or a reply timed out.
    Failed = 4,
}

impl Exit {
    pub fn for_error(error: &Error) -> Exit {
        match error {
            Error::InvalidRequest(_) => Exit::Usage,
            Error::Connect { .. } => Exit::CannotConnect,
            Error::MembershipIncomplete { source, .. } => Exit::for_error(source),
            _ => Exit::Failed,
        }
    }

    fn refused_unless(done: bool) -> Exit {
        if done {
            Exit::Done
        } else {
            Exit::Refused
        }
    }
}

/// The lock a failed command was about, so its error object still has `resource` and the
/// command's boolean.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub resource: &'a str,
    /// `isAcquired`, `isReleased`, `isExtended` or `isLocked`.
    pub flag: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct Output {
    format: Format,
    errors_on_stdout: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HolderJson {
    owner: String,
    fencing_token: u64,
    expires_ms: u64,
}

impl From<&Holder> for HolderJson {
    fn from(holder: &Holder) -> HolderJson {
        HolderJson {
            owner: display_bytes(&holder.owner),
            fencing_token: holder.fencing_token,
            expires_ms: millis(holder.remaining),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LockJson<'a> {
    resource: &'a str,
    is_acquired: bool,
    fencing_token: Option<u64>,
    owner: String,
    expires_ms: Option<u64>,
    status: &'static str,
    holder: Option<HolderJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UnlockJson<'a> {
    resource: &'a str,
    is_released: bool,
    fencing_token: Option<u64>,
    owner: String,
    status: &'static str,
    holder: Option<HolderJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtendJson<'a> {
    resource: &'a str,
    is_extended: bool,
    fencing_token: Option<u64>,
    owner: String,
    expires_ms: Option<u64>,
    status: &'static str,
    holder: Option<HolderJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GetJson<'a> {
    resource: &'a str,
    is_locked: bool,
    owner: Option<String>,
    fencing_token: Option<u64>,
    expires_ms: Option<u64>,
    waiters: u32,
    durability: Option<&'static str>,
    last_fencing_token: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PingJson {
    pong: bool,
    round_trip_us: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LimitsJson {
    frame_bytes_max: u32,
    key_bytes_max: u16,
    owner_bytes_max: u16,
    ttl_ms_max: u64,
    wait_ms_max: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InfoJson<'a> {
    server: &'a str,
    version: u8,
    shard_count: u16,
    limits: LimitsJson,
    stats: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct MembersJson<'a> {
    action: &'a str,
    node: u64,
    shards: Vec<ShardVotersJson<'a>>,
}

#[derive(Serialize)]
struct ShardVotersJson<'a> {
    shard: u16,
    voters: &'a [u64],
}

/// `{"resource", "<flag>": false, "error": {...}}`, the first two only with a subject.
#[derive(Serialize)]
struct ErrorReportJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    #[serde(flatten)]
    flag: Option<Flag>,
    error: ErrorJson<'a>,
}

/// The command's boolean, named by the command (`isAcquired`, ...), always false.
struct Flag(&'static str);

impl Serialize for Flag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &false)?;
        map.end()
    }
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: &'a str,
    class: &'a str,
    message: &'a str,
}

impl Output {
    pub fn new(format: Format) -> Output {
        Output {
            format,
            errors_on_stdout: false,
        }
    }

    /// The shell's output: errors on stdout too, in order with the results.
    pub fn for_shell(self) -> Output {
        Output {
            errors_on_stdout: true,
            ..self
        }
    }

    pub fn lock(&self, resource: &str, guard: &LockGuard) -> Exit {
        let owner = display_bytes(guard.owner());
        let holder = guard.holder();
        let json = LockJson {
            resource,
            is_acquired: guard.is_acquired(),
            fencing_token: guard.fencing_token(),
            owner: owner.clone(),
            expires_ms: guard.ttl().map(millis),
            status: if guard.is_acquired() {
                "acquired"
            } else {
                "busy"
            },
            holder: holder.map(HolderJson::from),
        };
        self.emit(&json, || match (guard.fencing_token(), guard.ttl()) {
            (Some(token), Some(ttl)) => format!(
                "acquired {resource} token={token} owner={owner} expires_ms={}",
                millis(ttl)
            ),
            _ => format!("not acquired {resource}{}", held_by(holder)),
        });
        Exit::refused_unless(guard.is_acquired())
    }

    pub fn unlock(&self, resource: &str, owner: &[u8], outcome: &UnlockOutcome) -> Exit {
        let (status, token, holder) = match outcome {
            UnlockOutcome::Released { fencing_token } => ("released", Some(*fencing_token), None),
            UnlockOutcome::NotOwner(holder) => ("notOwner", None, Some(holder)),
            UnlockOutcome::NotHeld { .. } => ("notHeld", None, None),
            UnlockOutcome::ReleasedUncertain { .. } => ("releasedUncertain", None, None),
        };
        let json = UnlockJson {
            resource,
            is_released: outcome.is_released(),
            fencing_token: token,
            owner: display_bytes(owner),
            status,
            holder: holder.map(HolderJson::from),
        };
        self.emit(&json, || match outcome {
            UnlockOutcome::Released { fencing_token } => {
                format!("released {resource} token={fencing_token}")
            }
            UnlockOutcome::NotOwner(holder) => {
                format!("not owner of {resource}{}", held_by(Some(holder)))
            }
            UnlockOutcome::NotHeld { last_fencing_token } => {
                format!("not held {resource}{}", last_token(*last_fencing_token))
            }
            UnlockOutcome::ReleasedUncertain { last_fencing_token } => format!(
                "not held {resource}{}: maybe released by this unlock (its first attempt \
                 reached a leader that lost its leadership)",
                last_token(*last_fencing_token)
            ),
        });
        Exit::refused_unless(outcome.is_released())
    }

    pub fn extend(&self, resource: &str, owner: &[u8], outcome: &ExtendOutcome) -> Exit {
        let (status, token, expires_ms, holder) = match outcome {
            ExtendOutcome::Extended { fencing_token, ttl } => {
                ("extended", Some(*fencing_token), Some(millis(*ttl)), None)
            }
            ExtendOutcome::NotOwner(holder) => ("notOwner", None, None, Some(holder)),
            ExtendOutcome::NotHeld { .. } => ("notHeld", None, None, None),
        };
        let json = ExtendJson {
            resource,
            is_extended: outcome.is_extended(),
            fencing_token: token,
            owner: display_bytes(owner),
            expires_ms,
            status,
            holder: holder.map(HolderJson::from),
        };
        self.emit(&json, || match outcome {
            ExtendOutcome::Extended { fencing_token, ttl } => format!(
                "extended {resource} token={fencing_token} expires_ms={}",
                millis(*ttl)
            ),
            ExtendOutcome::NotOwner(holder) => {
                format!("not owner of {resource}{}", held_by(Some(holder)))
            }
            ExtendOutcome::NotHeld { last_fencing_token } => {
                format!("not held {resource}{}", last_token(*last_fencing_token))
            }
        });
        Exit::refused_unless(outcome.is_extended())
    }

    pub fn get(&self, resource: &str, state: &LockState) -> Exit {
        let json = match state {
            LockState::Held(held) => GetJson {
                resource,
                is_locked: true,
                owner: Some(display_bytes(&held.owner)),
                fencing_token: Some(held.fencing_token),
                expires_ms: Some(millis(held.remaining)),
                waiters: held.waiters,
                durability: Some(held.durability.name()),
                last_fencing_token: Some(held.fencing_token),
            },
            LockState::NotHeld { last_fencing_token } => GetJson {
                resource,
                is_locked: false,
                owner: None,
                fencing_token: None,
                expires_ms: None,
                waiters: 0,
                durability: None,
                last_fencing_token: *last_fencing_token,
            },
        };
        self.emit(&json, || match state {
            LockState::Held(held) => format!(
                "locked {resource} owner={} token={} expires_ms={} waiters={} durability={}",
                display_bytes(&held.owner),
                held.fencing_token,
                millis(held.remaining),
                held.waiters,
                held.durability.name()
            ),
            LockState::NotHeld { last_fencing_token } => {
                format!("not locked {resource}{}", last_token(*last_fencing_token))
            }
        });
        Exit::refused_unless(state.is_locked())
    }

    pub fn ping(&self, round_trip: Duration) -> Exit {
        let round_trip_us = u64::try_from(round_trip.as_micros()).unwrap_or(u64::MAX);
        let json = PingJson {
            pong: true,
            round_trip_us,
        };
        self.emit(&json, || format!("pong round_trip_us={round_trip_us}"));
        Exit::Done
    }

    pub fn info(&self, hello: &HelloOk, info: &InfoReply) -> Exit {
        let stats = info
            .fields
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::Value::from(*value)))
            .collect();
        let json = InfoJson {
            server: &hello.server_name,
            version: hello.version,
            shard_count: hello.shard_count,
            limits: LimitsJson {
                frame_bytes_max: hello.frame_bytes_max,
                key_bytes_max: hello.key_bytes_max,
                owner_bytes_max: hello.owner_bytes_max,
                ttl_ms_max: hello.ttl_ms_max,
                wait_ms_max: hello.wait_ms_max,
            },
            stats,
        };
        self.emit(&json, || {
            let mut line = format!(
                "server={} version={} shards={}",
                hello.server_name.replace(char::is_whitespace, "_"),
                hello.version,
                hello.shard_count
            );
            for (name, value) in &info.fields {
                line.push_str(&format!(" {name}={value}"));
            }
            line
        });
        Exit::Done
    }

    /// Each shard's Raft state on one node: a table, or one JSON object.
    pub fn cluster_status(&self, status: &ClusterStatus) -> Exit {
        self.emit(status, || status.table());
        Exit::Done
    }

    /// A membership change of every shard: each shard's voters once it was committed.
    /// `action` is `add` or `remove`.
    pub fn members(&self, action: &str, node: u64, shards: &[(u16, Vec<u64>)]) -> Exit {
        let json = MembersJson {
            action,
            node,
            shards: shards
                .iter()
                .map(|(shard, voters)| ShardVotersJson {
                    shard: *shard,
                    voters,
                })
                .collect(),
        };
        self.emit(&json, || {
            let lines: Vec<String> = shards
                .iter()
                .map(|(shard, voters)| {
                    let voters: Vec<String> = voters.iter().map(u64::to_string).collect();
                    format!("shard {shard}: voters {}", voters.join(","))
                })
                .collect();
            lines.join("\n")
        });
        Exit::Done
    }

    /// Reports `error` and returns its exit code.
    pub fn error(&self, subject: Option<Subject<'_>>, error: &Error) -> Exit {
        let class = error.class().name();
        self.report_error(subject, &error.code_name(), class, &error.message());
        Exit::for_error(error)
    }

    /// Reports a mistyped shell command (code `USAGE`).
    pub fn usage(&self, message: &str) -> Exit {
        self.report_error(None, "USAGE", "client", message);
        Exit::Usage
    }

    /// A line of text in text mode (the shell's help and notes); nothing in JSON mode,
    /// where every line is a result object.
    pub fn note(&self, text: &str) {
        if self.format == Format::Text {
            print_line(text);
        }
    }

    fn report_error(&self, subject: Option<Subject<'_>>, code: &str, class: &str, message: &str) {
        match self.format {
            Format::Json => {
                let report = ErrorReportJson {
                    resource: subject.map(|subject| subject.resource),
                    flag: subject.map(|subject| Flag(subject.flag)),
                    error: ErrorJson {
                        code,
                        class,
                        message,
                    },
                };
                print_line(&to_json(&report));
            }
            Format::Text => {
                let line = format!("error: {code} ({class}): {message}");
                if self.errors_on_stdout {
                    print_line(&line);
                } else {
                    eprintln!("{line}");
                }
            }
        }
    }

    fn emit(&self, json: &impl Serialize, text: impl FnOnce() -> String) {
        match self.format {
            Format::Json => print_line(&to_json(json)),
            Format::Text => print_line(&text()),
        }
    }
}

/// Prints one line and flushes, so output reaches a pipe before the next command runs. A
/// closed stdout (`kahu-cli ... | head -0`) is not an error worth a panic.
fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Serializes in field order (a `serde_json::Value` would sort the keys).
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("output structs serialize to JSON")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn held_by(holder: Option<&Holder>) -> String {
    match holder {
        Some(holder) => format!(
            ": held by {} token={} expires_ms={}",
            display_bytes(&holder.owner),
            holder.fencing_token,
            millis(holder.remaining)
        ),
        None => String::new(),
    }
}

fn last_token(token: Option<u64>) -> String {
    token.map_or_else(String::new, |token| format!(" last_token={token}"))
}
