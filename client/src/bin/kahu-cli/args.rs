//! `kahu-cli`'s flags (clap), and the one action they ask for.
//!
//! At most one command flag (`--lock`, `--unlock`, `--extend-lock`, `--get-lock`, `--ping`,
//! `--info`, `--cluster-status`, `--add-node`, `--remove-node`); none starts the interactive
//! shell. Every usage error, including the checks done here rather than by clap (`--expires`
//! with `--lock`; `--wait` only with `--lock`; `--token` only with `--unlock` and
//! `--extend-lock`, since clap's `requires` is satisfied by any member of a group,
//! clap-rs/clap#4707; a malformed `--add-node` value), exits with code 2 through clap.

use clap::error::ErrorKind;
use clap::{ArgGroup, CommandFactory, Parser, ValueEnum};
use kahu_client::Durability;
use kahu_protocol::members::validate_node_address;

/// Shown at the end of `--help`.
const AFTER_HELP: &str = "\
Exit codes:
  0  done (lock acquired, released, extended; lock held for --get-lock; membership changed)
  1  not acquired, not owner, not held
  2  usage error (bad flags or values)
  3  cannot connect to the server (to any of the --connect addresses)
  4  server or protocol error (the server refused the request, the connection broke, timeout)

Owner:
  The default owner is $KAHU_OWNER, else USER@HOST: the same for every run by one user on one
  host, so --unlock in a later run releases what --lock took. --lock therefore refuses a lock
  its own owner already holds (a second copy of a script gets \"not acquired\", not the lock).
  Because the owner is shared, give --unlock and --extend-lock the fencing token --lock
  printed (--token T): if the lease ended and another run of the same owner took the lock
  since, they answer \"not owner\" instead of releasing or extending that run's lock.

Clusters:
  Give --connect every node of a cluster (or any of them), comma-separated. The first that
  answers is asked for --ping, --info and --cluster-status; lock commands go to the leader of
  the lock's shard, learned from the nodes' NOT_LEADER hints, and are retried (a bounded
  number of times, and never in a way that could apply twice) while a leader is elected.
  --cluster-status prints, for each shard, whether the node asked leads it, the leader's node
  id, the Raft term and the commit, applied and last log indexes.

Membership:
  --add-node ID=PEER_ADDR/CLIENT_ADDR makes node ID a voter of every shard; --remove-node ID
  stops counting it. PEER_ADDR is where the other nodes reach it (IP:PORT), CLIENT_ADDR what
  clients are told to use (HOST:PORT), as in kahu-server --peers. A node being added must
  already be running, started with --join. Each shard is its own Raft group, so the change
  is made shard by shard on each shard's leader, each committed before the next, and one line
  per shard shows its voters (\"shard 0: voters 1,2,3,4\"). The change is idempotent: if it
  stops part way (the error names the shard, and how many were changed), run the same command
  again to finish it.

Leases:
  --lock never releases on exit: the lock lives until its lease (--expires) ends or --unlock.
  The shell (no command flag) releases the locks it took when it exits.

Example:
  IS_ACQUIRED=$(kahu-cli --lock backup-lock --expires 60000 --format json | jq .isAcquired)
  [ \"$IS_ACQUIRED\" = \"true\" ] || { echo \"Backup is already running!\"; exit 1; }
  pg_dump ...
  kahu-cli --unlock backup-lock --format json

  # the same, releasing only this run's grant:
  LOCK=$(kahu-cli --lock backup-lock --expires 60000 --format json)
  [ \"$(echo \"$LOCK\" | jq .isAcquired)\" = \"true\" ] || exit 1
  pg_dump ...
  kahu-cli --unlock backup-lock --token \"$(echo \"$LOCK\" | jq .fencingToken)\"";

#[derive(Debug, Parser)]
#[command(
    name = "kahu-cli",
    version,
    about = "Take, release and inspect kahu locks from scripts, or from an interactive shell",
    after_help = AFTER_HELP
)]
#[command(group(
    ArgGroup::new("command")
        .args([
            "lock", "unlock", "extend_lock", "get_lock", "ping", "info", "cluster_status",
            "add_node", "remove_node",
        ])
        .multiple(false)
))]
pub struct Args {
    /// Server address (host:port), or a cluster's nodes, comma-separated
    /// (10.0.0.1:8002,10.0.0.2:8002,10.0.0.3:8002)
    #[arg(
        short = 'c',
        long,
        alias = "connection-source",
        env = "KAHU_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:8002",
        value_name = "ADDR[,ADDR...]"
    )]
    pub connect: Vec<String>,

    /// Take lock K for --expires milliseconds; the lock is not released on exit
    #[arg(long, value_name = "K")]
    pub lock: Option<String>,

    /// Release lock K if the owner holds it
    #[arg(long, value_name = "K")]
    pub unlock: Option<String>,

    /// Set the lease of lock K to --expires milliseconds from now, if the owner holds it
    #[arg(long, value_name = "K")]
    pub extend_lock: Option<String>,

    /// Show who holds lock K
    #[arg(long, value_name = "K")]
    pub get_lock: Option<String>,

    /// Check that the server answers, and show the round trip time
    #[arg(long)]
    pub ping: bool,

    /// Show the server's name, limits and statistics
    #[arg(long)]
    pub info: bool,

    /// Show, per shard, whether the node asked leads it, the leader's node id, the Raft term
    /// and the commit, applied and last log indexes (a table, or JSON with --format json)
    #[arg(long)]
    pub cluster_status: bool,

    /// Make node ID a voter of every shard, reached at PEER_ADDR/CLIENT_ADDR
    /// (4=127.0.0.1:7004/127.0.0.1:8004), shard by shard; the node must already be running,
    /// started with --join
    #[arg(long, value_name = "ID=PEER_ADDR/CLIENT_ADDR", value_parser = parse_node_to_add)]
    pub add_node: Option<NodeToAdd>,

    /// Stop counting node ID as a voter of every shard, shard by shard
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub remove_node: Option<u64>,

    /// Lease in milliseconds, for --lock and --extend-lock
    #[arg(long, value_name = "MS")]
    pub expires: Option<u64>,

    /// With --unlock or --extend-lock: act only on the grant with fencing token T (as printed
    /// by --lock); a later grant of the lock, even to the same owner, answers "not owner"
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u64).range(1..))]
    pub token: Option<u64>,

    // The `[default: ...]` help texts are attributes, not doc comments, so rustdoc does not
    // read them as links.
    #[arg(
        long,
        value_name = "MS",
        help = "With --lock: wait up to MS milliseconds for the lock, queued on the server [default: 0]"
    )]
    pub wait: Option<u64>,

    #[arg(
        long,
        value_name = "MS",
        help = "With --lock --wait: polling interval in milliseconds, used only when the server \
                cannot queue the request [default: 100]"
    )]
    pub retry: Option<u64>,

    #[arg(
        long,
        env = "KAHU_OWNER",
        value_name = "O",
        help = "Lock owner [default: USER@HOST]"
    )]
    pub owner: Option<String>,

    /// Where --lock keeps the lock: persistent survives a server crash (synced to its log
    /// before the reply); ephemeral is faster and lives in the server's memory only
    #[arg(long, value_enum, default_value_t = DurabilityArg::Persistent)]
    pub durability: DurabilityArg,

    /// Output: one readable line, or one JSON object
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Reply timeout in milliseconds (a --lock --wait gets its wait on top)
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Ephemeral,
    Persistent,
}

impl From<DurabilityArg> for Durability {
    fn from(durability: DurabilityArg) -> Durability {
        match durability {
            DurabilityArg::Ephemeral => Durability::Ephemeral,
            DurabilityArg::Persistent => Durability::Persistent,
        }
    }
}

/// The value of `--add-node`: a node id and its `PEER_ADDR/CLIENT_ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeToAdd {
    pub node: u64,
    pub address: String,
}

/// Parses `ID=PEER_ADDR/CLIENT_ADDR`, with the protocol's own address checks, so a bad value
/// is a usage error (exit 2) that says what is wrong before anything is sent.
fn parse_node_to_add(value: &str) -> Result<NodeToAdd, String> {
    let expected = "expected ID=PEER_ADDR/CLIENT_ADDR, e.g. 4=127.0.0.1:7004/127.0.0.1:8004";
    let Some((node, address)) = value.split_once('=') else {
        return Err(format!("no `=` after the node id; {expected}"));
    };
    let node = node
        .parse::<u64>()
        .ok()
        .filter(|&node| node >= 1)
        .ok_or_else(|| {
            format!("`{node}` is not a node id (a whole number of 1 or more); {expected}")
        })?;
    validate_node_address(address).map_err(|error| error.message)?;
    Ok(NodeToAdd {
        node,
        address: address.to_string(),
    })
}

/// What one run of `kahu-cli` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Lock {
        key: String,
        expires_ms: u64,
        wait_ms: u64,
        retry_ms: Option<u64>,
    },
    Unlock {
        key: String,
        /// Release only this grant; `None`: any grant of the owner.
        token: Option<u64>,
    },
    Extend {
        key: String,
        expires_ms: u64,
        /// Extend only this grant; `None`: any grant of the owner.
        token: Option<u64>,
    },
    Get {
        key: String,
    },
    Ping,
    Info,
    ClusterStatus,
    AddNode(NodeToAdd),
    RemoveNode {
        node: u64,
    },
    Shell,
}

impl Action {
    /// The lock key the action is about, for error reports.
    pub fn key(&self) -> Option<&str> {
        match self {
            Action::Lock { key, .. }
            | Action::Unlock { key, .. }
            | Action::Extend { key, .. }
            | Action::Get { key } => Some(key),
            Action::Ping
            | Action::Info
            | Action::ClusterStatus
            | Action::AddNode(_)
            | Action::RemoveNode { .. }
            | Action::Shell => None,
        }
    }
}

impl Args {
    /// The action the flags ask for; exits with code 2 when `--expires` is missing or
    /// given to a command that does not use it, and likewise for `--wait`, `--retry` and
    /// `--token`, and when `--connect` has an empty address.
    pub fn action(&self) -> Action {
        match self.resolve() {
            Ok(action) => action,
            Err((kind, message)) => Args::command().error(kind, message).exit(),
        }
    }

    fn resolve(&self) -> Result<Action, (ErrorKind, &'static str)> {
        if self.addresses().iter().any(String::is_empty) {
            return Err((
                ErrorKind::InvalidValue,
                "--connect has an empty address; give host:port[,host:port...]",
            ));
        }
        let expires = |flag| {
            self.expires.ok_or((
                ErrorKind::MissingRequiredArgument,
                match flag {
                    "lock" => "--lock needs --expires <MS>",
                    _ => "--extend-lock needs --expires <MS>",
                },
            ))
        };
        let action = if let Some(key) = &self.lock {
            Action::Lock {
                key: key.clone(),
                expires_ms: expires("lock")?,
                wait_ms: self.wait.unwrap_or(0),
                retry_ms: self.retry,
            }
        } else if let Some(key) = &self.extend_lock {
            Action::Extend {
                key: key.clone(),
                expires_ms: expires("extend")?,
                token: self.token,
            }
        } else if let Some(key) = &self.unlock {
            Action::Unlock {
                key: key.clone(),
                token: self.token,
            }
        } else if let Some(key) = &self.get_lock {
            Action::Get { key: key.clone() }
        } else if self.ping {
            Action::Ping
        } else if self.info {
            Action::Info
        } else if self.cluster_status {
            Action::ClusterStatus
        } else if let Some(add) = &self.add_node {
            Action::AddNode(add.clone())
        } else if let Some(node) = self.remove_node {
            Action::RemoveNode { node }
        } else {
            Action::Shell
        };
        let uses_expires = matches!(action, Action::Lock { .. } | Action::Extend { .. });
        if self.expires.is_some() && !uses_expires {
            return Err((
                ErrorKind::ArgumentConflict,
                "--expires applies only to --lock and --extend-lock",
            ));
        }
        let is_lock = matches!(action, Action::Lock { .. });
        if (self.wait.is_some() || self.retry.is_some()) && !is_lock {
            return Err((
                ErrorKind::ArgumentConflict,
                "--wait and --retry apply only to --lock",
            ));
        }
        let uses_token = matches!(action, Action::Unlock { .. } | Action::Extend { .. });
        if self.token.is_some() && !uses_token {
            return Err((
                ErrorKind::ArgumentConflict,
                "--token applies only to --unlock and --extend-lock",
            ));
        }
        Ok(action)
    }

    /// The addresses of `--connect`, without the spaces around them.
    pub fn addresses(&self) -> Vec<String> {
        self.connect
            .iter()
            .map(|address| address.trim().to_string())
            .collect()
    }

    /// `--owner`, `$KAHU_OWNER` (clap reads both), else `USER@HOST`.
    pub fn owner(&self) -> String {
        self.owner
            .clone()
            .unwrap_or_else(|| format!("{}@{}", kahu_client::user_name(), kahu_client::host_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("kahu-cli").chain(arguments.iter().copied()))
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn lock_needs_expires_and_accepts_wait_and_retry() {
        let args = parse(&[
            "--lock",
            "k",
            "--expires",
            "500",
            "--wait",
            "20",
            "--retry",
            "5",
        ]);
        assert_eq!(
            args.unwrap().resolve(),
            Ok(Action::Lock {
                key: "k".into(),
                expires_ms: 500,
                wait_ms: 20,
                retry_ms: Some(5)
            })
        );
        let missing = parse(&["--lock", "k"]).unwrap().resolve();
        assert_eq!(missing.unwrap_err().0, ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn usage_errors_are_caught() {
        assert!(parse(&["--lock", "a", "--unlock", "b"]).is_err());
        let wait = parse(&["--unlock", "b", "--wait", "5"]).unwrap().resolve();
        assert_eq!(wait.unwrap_err().0, ErrorKind::ArgumentConflict);
        assert!(parse(&["--format", "yaml"]).is_err());
        let stray = parse(&["--get-lock", "k", "--expires", "5"])
            .unwrap()
            .resolve();
        assert_eq!(stray.unwrap_err().0, ErrorKind::ArgumentConflict);
    }

    #[test]
    fn unlock_and_extend_take_an_optional_token() {
        let unlock = parse(&["--unlock", "k", "--token", "42"])
            .unwrap()
            .resolve();
        assert_eq!(
            unlock,
            Ok(Action::Unlock {
                key: "k".into(),
                token: Some(42)
            })
        );
        let extend = parse(&["--extend-lock", "k", "--expires", "500", "--token", "7"]);
        assert_eq!(
            extend.unwrap().resolve(),
            Ok(Action::Extend {
                key: "k".into(),
                expires_ms: 500,
                token: Some(7)
            })
        );
        let any = parse(&["--unlock", "k"]).unwrap().resolve();
        assert_eq!(
            any,
            Ok(Action::Unlock {
                key: "k".into(),
                token: None
            })
        );
        let zero = parse(&["--unlock", "k", "--token", "0"]).unwrap_err();
        assert_eq!(
            zero.kind(),
            ErrorKind::ValueValidation,
            "no grant has token 0"
        );
        assert!(parse(&["--unlock", "k", "--token", "soon"]).is_err());
        for stray in [
            &["--lock", "k", "--expires", "5", "--token", "3"][..],
            &["--get-lock", "k", "--token", "3"],
            &["--token", "3"],
        ] {
            let resolved = parse(stray).unwrap().resolve();
            assert_eq!(
                resolved.unwrap_err().0,
                ErrorKind::ArgumentConflict,
                "{stray:?}"
            );
        }
    }

    #[test]
    fn no_command_is_the_shell() {
        let args = parse(&["-c", "10.0.0.1:8002"]).unwrap();
        assert_eq!(args.resolve(), Ok(Action::Shell));
        assert_eq!(args.addresses(), ["10.0.0.1:8002"]);
    }

    #[test]
    fn connect_takes_a_comma_separated_list() {
        let args = parse(&["--connect", "a:1, b:2,c:3", "--cluster-status"]).unwrap();
        assert_eq!(args.addresses(), ["a:1", "b:2", "c:3"]);
        assert_eq!(args.resolve(), Ok(Action::ClusterStatus));
        let old_name = parse(&["--connection-source", "a:1,b:2"]).unwrap();
        assert_eq!(old_name.addresses(), ["a:1", "b:2"]);
        let empty = parse(&["--connect", "a:1,,b:2"]).unwrap().resolve();
        assert_eq!(empty.unwrap_err().0, ErrorKind::InvalidValue);
        assert!(
            parse(&["--cluster-status", "--info"]).is_err(),
            "one command"
        );
    }

    #[test]
    fn add_node_and_remove_node_take_a_node_and_its_address() {
        let args = parse(&[
            "--connect",
            "a:1,b:2,c:3",
            "--add-node",
            "4=127.0.0.1:7004/127.0.0.1:8004",
        ])
        .unwrap();
        assert_eq!(
            args.resolve(),
            Ok(Action::AddNode(NodeToAdd {
                node: 4,
                address: "127.0.0.1:7004/127.0.0.1:8004".into()
            }))
        );
        let remove = parse(&["--remove-node", "3"]).unwrap().resolve();
        assert_eq!(remove, Ok(Action::RemoveNode { node: 3 }));
        assert!(parse(&["--add-node", "4=127.0.0.1:7004/a:1", "--remove-node", "3"]).is_err());
        let stray = parse(&["--remove-node", "3", "--token", "5"])
            .unwrap()
            .resolve();
        assert_eq!(stray.unwrap_err().0, ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_add_node_values_say_what_is_wrong() {
        let cases = [
            ("127.0.0.1:7004/127.0.0.1:8004", "no `=` after the node id"),
            ("0=127.0.0.1:7004/127.0.0.1:8004", "`0` is not a node id"),
            (
                "four=127.0.0.1:7004/127.0.0.1:8004",
                "`four` is not a node id",
            ),
            ("4=127.0.0.1:7004", "has no `/`"),
            (
                "4=localhost:7004/127.0.0.1:8004",
                "peer address `localhost:7004` is not IP:PORT",
            ),
            ("4=127.0.0.1:7004/", "client address `` is empty"),
            ("4=127.0.0.1:7004/a:1,b:2", "`,`"),
        ];
        for (value, why) in cases {
            let error = parse(&["--add-node", value]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{value}");
            let message = error.to_string();
            assert!(message.contains(why), "{value}: {message}");
            assert!(
                message.contains("e.g. 4=127.0.0.1:7004/127.0.0.1:8004")
                    || message.contains("e.g. 127.0.0.1:7004/127.0.0.1:8004"),
                "{value}: {message}"
            );
        }
        let zero = parse(&["--remove-node", "0"]).unwrap_err();
        assert_eq!(
            zero.kind(),
            ErrorKind::ValueValidation,
            "node ids start at 1"
        );
        assert!(parse(&["--remove-node", "three"]).is_err());
    }
}
