//! `kahu-cli`: kahu locks from shell scripts, and an interactive shell.
//!
//! ```bash
//! kahu-cli --lock backup-lock --expires 60000 --format json   # take (exit 1 if taken)
//! kahu-cli --unlock backup-lock                               # release
//! kahu-cli --unlock backup-lock --token 1099511627777         # release only that grant
//! kahu-cli --connect n1:8002,n2:8002,n3:8002 --cluster-status # each shard's Raft state
//! kahu-cli --connect n1:8002 --add-node 4=10.0.0.4:7004/10.0.0.4:8002  # a new voter
//! kahu-cli --connect n1:8002 --remove-node 3                  # one voter less
//! kahu-cli                                                    # interactive shell
//! ```
//!
//! One run, one command, one line of output (text or JSON, see `output`), and an exit code
//! a script can branch on (see `--help`). `--lock` never releases on exit: the lock lives on
//! its lease, so a script can take it in one command and release it in another.
//!
//! The default owner is stable for a user on a host (`USER@HOST`, or `$KAHU_OWNER`), so a
//! later `--unlock` can release what an earlier `--lock` took. Because every run shares that
//! owner, `--lock` sends LOCK with `if_not_held`: without it, a second copy of a script
//! would be granted the first copy's lock as an idempotent re-acquire. For the same reason
//! `--unlock` and `--extend-lock` take `--token`: with it they act on one grant only, never
//! on a later grant to another run of the same owner.
//!
//! `--connect` takes one address or a cluster's nodes, comma-separated; the client routes
//! each lock command to the leader of the lock's shard (see `kahu_client::Client::
//! connect_cluster`).
//!
//! `--add-node` and `--remove-node` change every shard's voters, shard by shard on each
//! shard's leader (see `kahu_client::Client::add_node`), and print each shard's voters.
//!
//! Layout: `args` (flags), `output` (results and exit codes), `cluster_status`
//! (`--cluster-status`), `shell` (no command flag).

mod args;
mod cluster_status;
mod output;
mod shell;

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use kahu_client::{Client, ClientOptions, LockBuilder};
use kahu_protocol::request::{validate_key, validate_ttl};

use crate::args::{Action, Args};
use crate::cluster_status::ClusterStatus;
use crate::output::{Exit, Output, Subject};
use crate::shell::Shell;

fn main() -> ExitCode {
    let args = Args::parse();
    let action = args.action();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    let exit = runtime.block_on(run(&args, action));
    ExitCode::from(exit as u8)
}

async fn run(args: &Args, action: Action) -> Exit {
    let output = Output::new(args.format);
    let owner = Bytes::from(args.owner());
    let subject = action.key().map(|key| Subject {
        resource: key,
        flag: match action {
            Action::Lock { .. } => "isAcquired",
            Action::Unlock { .. } => "isReleased",
            Action::Extend { .. } => "isExtended",
            _ => "isLocked",
        },
    });
    let options = ClientOptions::default()
        .request_timeout(Duration::from_millis(args.timeout))
        .client_name(format!("kahu-cli/{}", env!("CARGO_PKG_VERSION")))
        .owner(owner.clone());
    // A usage error is a usage error even when no server is listening.
    if let Err(error) = preflight(&action, &options) {
        return output.error(subject, &error);
    }
    let client = match Client::connect_cluster_with(args.addresses(), options).await {
        Ok(client) => client,
        Err(error) => return output.error(subject, &error),
    };
    let result = match &action {
        Action::Lock {
            key,
            expires_ms,
            wait_ms,
            retry_ms,
        } => {
            let mut builder = client
                .lock(key.clone())
                .ttl(Duration::from_millis(*expires_ms))
                .wait(Duration::from_millis(*wait_ms))
                .durability(args.durability.into())
                .if_not_held(true);
            if let Some(retry_ms) = retry_ms {
                builder = builder.retry(Duration::from_millis(*retry_ms));
            }
            lock(builder, key, output).await
        }
        Action::Unlock { key, token } => client
            .unlock_token(key.clone(), owner.clone(), *token)
            .await
            .map(|outcome| output.unlock(key, &owner, &outcome)),
        Action::Extend {
            key,
            expires_ms,
            token,
        } => client
            .extend_token(
                key.clone(),
                owner.clone(),
                Duration::from_millis(*expires_ms),
                *token,
            )
            .await
            .map(|outcome| output.extend(key, &owner, &outcome)),
        Action::Get { key } => client
            .get(key.clone())
            .await
            .map(|state| output.get(key, &state)),
        Action::Ping => client
            .ping()
            .await
            .map(|round_trip| output.ping(round_trip)),
        Action::Info => client
            .info()
            .await
            .map(|info| output.info(&client.server_hello(), &info)),
        Action::ClusterStatus => client.info().await.map(|info| {
            let status = ClusterStatus::from_info(client.address(), &client.server_hello(), &info);
            output.cluster_status(&status)
        }),
        Action::AddNode(add) => client
            .add_node(add.node, &add.address)
            .await
            .map(|shards| output.members("add", add.node, &shards)),
        Action::RemoveNode { node } => client
            .remove_node(*node)
            .await
            .map(|shards| output.members("remove", *node, &shards)),
        Action::Shell => {
            let shell = Shell {
                client: client.clone(),
                output,
                owner,
                durability: args.durability.into(),
            };
            Ok(shell.run().await)
        }
    };
    result.unwrap_or_else(|error| output.error(subject, &error))
}

/// Checks the values the server would refuse before connecting, so that a bad value exits
/// with code 2 whether or not a server is up.
fn preflight(action: &Action, options: &ClientOptions) -> Result<(), kahu_client::Error> {
    options.validate()?;
    if let Some(key) = action.key() {
        validate_key(key.as_bytes())?;
    }
    if let Action::Lock { expires_ms, .. } | Action::Extend { expires_ms, .. } = action {
        validate_ttl(*expires_ms)?;
    }
    Ok(())
}

/// Takes the lock and leaves it to its lease: a script releases it with `--unlock`.
async fn lock(
    builder: LockBuilder<'_>,
    key: &str,
    output: Output,
) -> Result<Exit, kahu_client::Error> {
    let guard = builder.acquire().await?;
    let exit = output.lock(key, &guard);
    guard.detach();
    Ok(exit)
}
