//! The interactive shell: `kahu-cli` with no command flag.
//!
//! ```text
//! kahu> lock backup 60000 wait 5000
//! acquired backup token=4294967297 owner=alice@host1 expires_ms=60000
//! kahu> get backup
//! locked backup owner=alice@host1 token=4294967297 expires_ms=59412 waiters=0 durability=ephemeral
//! kahu> exit
//! released backup token=4294967297
//! ```
//!
//! On a terminal, lines are read with rustyline (editing, history in `~/.kahu_history`
//! when `$HOME` is set); otherwise stdin is read line by line, so a script or a test can pipe
//! commands in. Results are printed as by the flag mode (text or JSON lines), errors on
//! stdout in order with them; a bad command never ends the shell.
//!
//! The shell keeps a guard for every lock it took and releases them all on `exit`, `quit`
//! or end of input. Its locks use the same owner and the same `if_not_held` rule as
//! `--lock`, so a shell and a script of one user see each other's locks as taken. A lock
//! still lives on its lease: a shell idle past `--expires` loses it (use `extend`). Since
//! the owner is shared, the guards' UNLOCK and EXTEND carry their fencing tokens: when a
//! lease ran out and a script of the same owner took the lock since, `unlock`, `extend` and
//! `exit` answer "not owner" and leave the script's lock alone.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use kahu_client::{Client, Durability, LockGuard};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::output::{Exit, Output, Subject};

const PROMPT: &str = "kahu> ";

const HELP: &str = "\
commands:
  lock K MS [wait MS]   take lock K with a lease of MS milliseconds, waiting up to wait MS
  unlock K              release lock K
  extend K MS           set the lease of lock K to MS milliseconds from now
  get K                 show who holds lock K
  info                  show the server's name, limits and statistics
  ping                  check that the server answers
  help                  show this help
  exit, quit, Ctrl-D    release the locks taken in this shell and leave";

/// One parsed shell line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ShellCommand {
    Lock {
        key: String,
        expires_ms: u64,
        wait_ms: u64,
    },
    Unlock {
        key: String,
    },
    Extend {
        key: String,
        expires_ms: u64,
    },
    Get {
        key: String,
    },
    Info,
    Ping,
    Help,
    Exit,
    /// A blank line or a `#` comment.
    Nothing,
}

/// The shell's settings from the command line.
#[derive(Clone, Debug)]
pub struct Shell {
    pub client: Client,
    pub output: Output,
    pub owner: Bytes,
    pub durability: Durability,
}

impl Shell {
    /// Reads and runs commands until `exit` or end of input, then releases every lock the
    /// shell holds. Returns [`Exit::Done`]: errors of single commands are reported and the
    /// shell goes on.
    pub async fn run(self) -> Exit {
        let output = self.output.for_shell();
        let mut lines = LineSource::open();
        let mut held: HashMap<String, LockGuard> = HashMap::new();
        if lines.is_interactive() {
            output.note("kahu shell: type `help` for commands, `exit` to leave");
        }
        while let Some(line) = lines.next_line().await {
            match parse(&line) {
                Ok(ShellCommand::Exit) => break,
                Ok(command) => self.execute(command, &mut held, output).await,
                Err(message) => {
                    output.usage(&message);
                }
            }
        }
        let mut keys: Vec<String> = held.keys().cloned().collect();
        keys.sort();
        for key in keys {
            if let Some(guard) = held.remove(&key) {
                match guard.release().await {
                    Ok(outcome) => output.unlock(&key, &self.owner, &outcome),
                    Err(error) => output.error(Some(subject(&key, "isReleased")), &error),
                };
            }
        }
        lines.save_history();
        Exit::Done
    }

    async fn execute(
        &self,
        command: ShellCommand,
        held: &mut HashMap<String, LockGuard>,
        output: Output,
    ) {
        match command {
            ShellCommand::Lock {
                key,
                expires_ms,
                wait_ms,
            } => {
                let result = self
                    .client
                    .lock(key.clone())
                    .owner(self.owner.clone())
                    .ttl(Duration::from_millis(expires_ms))
                    .wait(Duration::from_millis(wait_ms))
                    .durability(self.durability)
                    .if_not_held(true)
                    .acquire()
                    .await;
                match result {
                    Ok(guard) => {
                        output.lock(&key, &guard);
                        if guard.is_acquired() {
                            // A guard left from an earlier grant whose lease ran out must
                            // not unlock the new grant when it is dropped.
                            if let Some(old) = held.insert(key, guard) {
                                old.detach();
                            }
                        }
                    }
                    Err(error) => {
                        output.error(Some(subject(&key, "isAcquired")), &error);
                    }
                }
            }
            ShellCommand::Unlock { key } => {
                let result = match held.remove(&key) {
                    Some(guard) => guard.release().await,
                    None => self.client.unlock(key.clone(), self.owner.clone()).await,
                };
                match result {
                    Ok(outcome) => output.unlock(&key, &self.owner, &outcome),
                    Err(error) => output.error(Some(subject(&key, "isReleased")), &error),
                };
            }
            ShellCommand::Extend { key, expires_ms } => {
                let ttl = Duration::from_millis(expires_ms);
                let result = match held.get_mut(&key) {
                    Some(guard) => guard.extend(ttl).await,
                    None => {
                        self.client
                            .extend(key.clone(), self.owner.clone(), ttl)
                            .await
                    }
                };
                match result {
                    Ok(outcome) => {
                        if !outcome.is_extended() {
                            // The lease ran out: nothing to release on exit.
                            if let Some(guard) = held.remove(&key) {
                                guard.detach();
                            }
                        }
                        output.extend(&key, &self.owner, &outcome)
                    }
                    Err(error) => output.error(Some(subject(&key, "isExtended")), &error),
                };
            }
            ShellCommand::Get { key } => {
                match self.client.get(key.clone()).await {
                    Ok(state) => output.get(&key, &state),
                    Err(error) => output.error(Some(subject(&key, "isLocked")), &error),
                };
            }
            ShellCommand::Info => {
                match self.client.info().await {
                    Ok(info) => output.info(&self.client.server_hello(), &info),
                    Err(error) => output.error(None, &error),
                };
            }
            ShellCommand::Ping => {
                match self.client.ping().await {
                    Ok(round_trip) => output.ping(round_trip),
                    Err(error) => output.error(None, &error),
                };
            }
            ShellCommand::Help => output.note(HELP),
            ShellCommand::Exit | ShellCommand::Nothing => {}
        }
    }
}

fn subject<'a>(key: &'a str, flag: &'static str) -> Subject<'a> {
    Subject {
        resource: key,
        flag,
    }
}

/// Parses one line. Command words are case-insensitive; keys are taken as typed.
fn parse(line: &str) -> Result<ShellCommand, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((command, arguments)) = words.split_first() else {
        return Ok(ShellCommand::Nothing);
    };
    if command.starts_with('#') {
        return Ok(ShellCommand::Nothing);
    }
    let command = command.to_ascii_lowercase();
    let usage = |form: &str| format!("usage: {form}");
    match (command.as_str(), arguments) {
        ("lock", [key, ms]) => Ok(ShellCommand::Lock {
            key: key.to_string(),
            expires_ms: number(ms, "MS")?,
            wait_ms: 0,
        }),
        ("lock", [key, ms, wait, wait_ms]) if wait.eq_ignore_ascii_case("wait") => {
            Ok(ShellCommand::Lock {
                key: key.to_string(),
                expires_ms: number(ms, "MS")?,
                wait_ms: number(wait_ms, "wait MS")?,
            })
        }
        ("lock", _) => Err(usage("lock K MS [wait MS]")),
        ("unlock", [key]) => Ok(ShellCommand::Unlock {
            key: key.to_string(),
        }),
        ("unlock", _) => Err(usage("unlock K")),
        ("extend", [key, ms]) => Ok(ShellCommand::Extend {
            key: key.to_string(),
            expires_ms: number(ms, "MS")?,
        }),
        ("extend", _) => Err(usage("extend K MS")),
        ("get", [key]) => Ok(ShellCommand::Get {
            key: key.to_string(),
        }),
        ("get", _) => Err(usage("get K")),
        ("info", []) => Ok(ShellCommand::Info),
        ("ping", []) => Ok(ShellCommand::Ping),
        ("help" | "?", []) => Ok(ShellCommand::Help),
        ("exit" | "quit", []) => Ok(ShellCommand::Exit),
        ("info" | "ping" | "help" | "exit" | "quit", _) => {
            Err(format!("`{command}` takes no arguments"))
        }
        _ => Err(format!("unknown command `{command}`; type `help`")),
    }
}

fn number(text: &str, what: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a whole number of milliseconds, not `{text}`"))
}

/// Where shell lines come from: rustyline on a terminal, plain lines from a pipe.
enum LineSource {
    /// The editor is moved into a blocking task while it waits for a line.
    Editor {
        editor: Option<Box<DefaultEditor>>,
        history: Option<PathBuf>,
    },
    Piped,
}

impl LineSource {
    fn open() -> LineSource {
        if !std::io::stdin().is_terminal() {
            return LineSource::Piped;
        }
        let Ok(mut editor) = DefaultEditor::new() else {
            return LineSource::Piped;
        };
        let history = std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(|home| PathBuf::from(home).join(".kahu_history"));
        if let Some(path) = &history {
            // A first run has no history file yet.
            let _ = editor.load_history(path);
        }
        LineSource::Editor {
            editor: Some(Box::new(editor)),
            history,
        }
    }

    fn is_interactive(&self) -> bool {
        matches!(self, LineSource::Editor { .. })
    }

    /// The next line, or `None` at end of input (Ctrl-D, closed pipe). Ctrl-C gives an
    /// empty line, as in most shells.
    async fn next_line(&mut self) -> Option<String> {
        match self {
            LineSource::Editor { editor, .. } => {
                let mut taken = editor.take()?;
                let (taken, result) = tokio::task::spawn_blocking(move || {
                    let result = taken.readline(PROMPT);
                    (taken, result)
                })
                .await
                .ok()?;
                let editor = editor.insert(taken);
                match result {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Some(line)
                    }
                    Err(ReadlineError::Interrupted) => Some(String::new()),
                    Err(ReadlineError::Eof) => None,
                    Err(error) => {
                        eprintln!("error: reading the terminal failed: {error}");
                        None
                    }
                }
            }
            LineSource::Piped => tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                match std::io::stdin().lock().read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line),
                }
            })
            .await
            .ok()
            .flatten(),
        }
    }

    fn save_history(&mut self) {
        if let LineSource::Editor {
            editor: Some(editor),
            history: Some(path),
        } = self
        {
            if let Err(error) = editor.save_history(path) {
                eprintln!(
                    "note: could not save history to {}: {error}",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(
            parse("LOCK backup 60000 WAIT 500"),
            Ok(ShellCommand::Lock {
                key: "backup".into(),
                expires_ms: 60000,
                wait_ms: 500
            })
        );
        assert_eq!(
            parse("  extend backup 1000\n"),
            Ok(ShellCommand::Extend {
                key: "backup".into(),
                expires_ms: 1000
            })
        );
        assert_eq!(parse("quit"), Ok(ShellCommand::Exit));
        assert_eq!(parse(""), Ok(ShellCommand::Nothing));
        assert_eq!(parse("# a comment"), Ok(ShellCommand::Nothing));
    }

    #[test]
    fn mistakes_get_a_usage_line() {
        assert_eq!(
            parse("lock backup"),
            Err("usage: lock K MS [wait MS]".into())
        );
        assert!(parse("lock backup soon").unwrap_err().contains("`soon`"));
        assert!(parse("frobnicate").unwrap_err().contains("unknown command"));
        assert!(parse("ping now").unwrap_err().contains("no arguments"));
    }
}
