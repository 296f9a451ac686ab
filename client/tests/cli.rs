//! `kahu-cli` as a script sees it: the real binary against the real server (in process,
//! 127.0.0.1 port 0). Checks the JSON of every command, the exit codes, the shell driven
//! through a pipe, and the README's backup script run twice at once.
//!
//! The server runs on a multi-threaded tokio runtime owned by the test, so the test itself
//! can block on child processes. Children get a clean environment for the kahu variables
//! (`KAHU_ADDR`, `KAHU_OWNER`) so the caller's shell does not leak into the results. Every
//! loop is bounded in count and time; every server started is shut down.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kahu_client::{Client, LockState};
use kahu_server::{Config, RunningServer, Server};
use serde_json::Value;
use tempfile::TempDir;

const CLI: &str = env!("CARGO_BIN_EXE_kahu-cli");

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    address: SocketAddr,
    _data_dir: TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        let server = runtime
            .block_on(Server::start(Config::for_tests(data_dir.path())))
            .unwrap();
        Fixture {
            runtime,
            address: server.local_addr(),
            server: Some(server),
            _data_dir: data_dir,
        }
    }

    /// `kahu-cli -c ADDR` with the kahu variables cleared.
    fn command(&self) -> Command {
        cli_command(&self.address.to_string())
    }

    fn run(&self, arguments: &[&str]) -> Output {
        self.command().args(arguments).output().unwrap()
    }

    /// Runs a command with `--format json` and returns its exit code and its one object.
    fn json(&self, arguments: &[&str]) -> (i32, Value) {
        let output = self
            .command()
            .args(arguments)
            .args(["--format", "json"])
            .output()
            .unwrap();
        (exit_code(&output), one_object(&output))
    }

    fn client(&self) -> Client {
        self.runtime
            .block_on(Client::connect(self.address))
            .unwrap()
    }

    fn get(&self, client: &Client, key: &str) -> LockState {
        self.runtime.block_on(client.get(key.to_string())).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

fn cli_command(address: &str) -> Command {
    let mut command = Command::new(CLI);
    command
        .args(["-c", address])
        .env_remove("KAHU_ADDR")
        .env_remove("KAHU_OWNER");
    command
}

fn exit_code(output: &Output) -> i32 {
    output.status.code().expect("kahu-cli exits, not killed")
}

fn one_object(output: &Output) -> Value {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line of output: {stdout:?}");
    let value: Value = serde_json::from_str(lines[0]).unwrap();
    assert!(value.is_object(), "{value}");
    value
}

fn default_owner() -> String {
    format!("{}@{}", kahu_client::user_name(), kahu_client::host_name())
}

#[test]
fn every_command_prints_its_documented_json_and_exit_code() {
    let fixture = Fixture::start();
    let owner = default_owner();

    // Phase 1: lock: granted (0), then refused to a second run of the same owner (1).
    let (code, lock) = fixture.json(&["--lock", "json-lock", "--expires", "60000"]);
    assert_eq!(code, 0, "{lock}");
    assert_eq!(lock["resource"], "json-lock");
    assert_eq!(lock["isAcquired"], true);
    assert_eq!(lock["owner"], owner.as_str());
    assert_eq!(lock["expiresMs"], 60000);
    assert_eq!(lock["status"], "acquired");
    let token = lock["fencingToken"].as_u64().expect("a numeric token");
    let (code, again) = fixture.json(&["--lock", "json-lock", "--expires", "60000"]);
    assert_eq!(code, 1, "{again}");
    assert_eq!(again["isAcquired"], false);
    assert_eq!(again["fencingToken"], Value::Null);
    assert_eq!(again["holder"]["owner"], owner.as_str());
    assert_eq!(again["holder"]["fencingToken"], token);

    // Phase 2: get shows the holder (0).
    let (code, get) = fixture.json(&["--get-lock", "json-lock"]);
    assert_eq!(code, 0, "{get}");
    assert_eq!(get["resource"], "json-lock");
    assert_eq!(get["isLocked"], true);
    assert_eq!(get["owner"], owner.as_str());
    assert_eq!(get["fencingToken"], token);
    assert!(get["expiresMs"].as_u64().unwrap() <= 60000);
    assert_eq!(get["waiters"], 0);
    assert_eq!(get["durability"], "persistent");

    // Phase 3: extend (0), unlock (0).
    let (code, extend) = fixture.json(&["--extend-lock", "json-lock", "--expires", "30000"]);
    assert_eq!(code, 0, "{extend}");
    assert_eq!(extend["isExtended"], true);
    assert_eq!(extend["fencingToken"], token);
    assert_eq!(extend["expiresMs"], 30000);
    let (code, unlock) = fixture.json(&["--unlock", "json-lock"]);
    assert_eq!(code, 0, "{unlock}");
    assert_eq!(unlock["resource"], "json-lock");
    assert_eq!(unlock["isReleased"], true);
    assert_eq!(unlock["fencingToken"], token);

    // Phase 4: the lock is gone: unlock, extend and get all answer 1.
    let (code, unlock) = fixture.json(&["--unlock", "json-lock"]);
    assert_eq!(
        (code, &unlock["isReleased"], &unlock["status"]),
        (1, &Value::Bool(false), &Value::from("notHeld"))
    );
    let (code, extend) = fixture.json(&["--extend-lock", "json-lock", "--expires", "100"]);
    assert_eq!((code, &extend["isExtended"]), (1, &Value::Bool(false)));
    let (code, get) = fixture.json(&["--get-lock", "json-lock"]);
    assert_eq!(
        (code, &get["isLocked"], &get["owner"]),
        (1, &Value::Bool(false), &Value::Null)
    );

    // Phase 5: ping and info.
    let (code, ping) = fixture.json(&["--ping"]);
    assert_eq!((code, &ping["pong"]), (0, &Value::Bool(true)));
    assert!(ping["roundTripUs"].is_u64());
    let (code, info) = fixture.json(&["--info"]);
    assert_eq!(code, 0, "{info}");
    assert_eq!(info["shardCount"], 2);
    assert!(info["stats"].is_object());
    assert!(info["limits"]["keyBytesMax"].is_u64());
}

#[test]
fn another_owner_is_not_owner_and_kahu_owner_sets_the_owner() {
    let fixture = Fixture::start();
    let (code, lock) = fixture.json(&["--lock", "owned", "--expires", "60000", "--owner", "alice"]);
    assert_eq!((code, &lock["owner"]), (0, &Value::from("alice")));

    let output = fixture
        .command()
        .args(["--unlock", "owned", "--format", "json"])
        .env("KAHU_OWNER", "bob")
        .output()
        .unwrap();
    let unlock = one_object(&output);
    assert_eq!(exit_code(&output), 1, "{unlock}");
    assert_eq!(unlock["status"], "notOwner");
    assert_eq!(unlock["owner"], "bob");
    assert_eq!(unlock["holder"]["owner"], "alice");

    let (code, _) = fixture.json(&["--unlock", "owned", "--owner", "alice"]);
    assert_eq!(code, 0);
}

#[test]
fn unlock_and_extend_with_a_token_act_on_that_grant_only() {
    let fixture = Fixture::start();
    let owner = default_owner();

    // Phase 1: a first run's grant is released by key, and a later run of the same owner
    // takes the lock again, with a larger token.
    let (code, first) = fixture.json(&["--lock", "grant", "--expires", "60000"]);
    assert_eq!(code, 0, "{first}");
    let first_token = first["fencingToken"].as_u64().unwrap();
    let (code, _) = fixture.json(&["--unlock", "grant"]);
    assert_eq!(code, 0);
    let (code, later) = fixture.json(&["--lock", "grant", "--expires", "60000"]);
    assert_eq!(code, 0, "{later}");
    let later_token = later["fencingToken"].as_u64().unwrap();
    assert!(later_token > first_token);

    // Phase 2: with the first token, extend and unlock answer "not owner" (exit 1) and name
    // the later grant; the JSON shape is unchanged.
    let first_flag = first_token.to_string();
    let (code, extend) = fixture.json(&[
        "--extend-lock",
        "grant",
        "--expires",
        "1000",
        "--token",
        &first_flag,
    ]);
    assert_eq!(
        (code, &extend["status"]),
        (1, &Value::from("notOwner")),
        "{extend}"
    );
    assert_eq!(extend["isExtended"], false);
    assert_eq!(extend["holder"]["owner"], owner.as_str());
    assert_eq!(extend["holder"]["fencingToken"], later_token);
    let (code, unlock) = fixture.json(&["--unlock", "grant", "--token", &first_flag]);
    assert_eq!(
        (code, &unlock["status"]),
        (1, &Value::from("notOwner")),
        "{unlock}"
    );
    let client = fixture.client();
    let LockState::Held(held) = fixture.get(&client, "grant") else {
        panic!("the later grant is still held");
    };
    assert_eq!(held.fencing_token, later_token);
    assert!(held.remaining > Duration::from_secs(1), "not extended");

    // Phase 3: with the later grant's token, both act.
    let later_flag = later_token.to_string();
    let (code, extend) = fixture.json(&[
        "--extend-lock",
        "grant",
        "--expires",
        "30000",
        "--token",
        &later_flag,
    ]);
    assert_eq!(
        (code, &extend["isExtended"]),
        (0, &Value::Bool(true)),
        "{extend}"
    );
    let (code, unlock) = fixture.json(&["--unlock", "grant", "--token", &later_flag]);
    assert_eq!(
        (code, &unlock["fencingToken"]),
        (0, &Value::from(later_token)),
        "{unlock}"
    );

    // Phase 4: a token of 0, or a token for another command, is a usage error.
    for arguments in [
        &["--unlock", "grant", "--token", "0"][..],
        &["--get-lock", "grant", "--token", "5"],
    ] {
        let output = fixture.run(arguments);
        assert_eq!(exit_code(&output), 2, "{arguments:?}");
    }
}

#[test]
fn text_output_is_one_readable_line() {
    let fixture = Fixture::start();
    let output = fixture.run(&["--lock", "text-lock", "--expires", "5000"]);
    assert_eq!(exit_code(&output), 0);
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(
        stdout.starts_with("acquired text-lock token="),
        "{stdout:?}"
    );

    let output = fixture.run(&["--lock", "text-lock", "--expires", "5000"]);
    assert_eq!(exit_code(&output), 1);
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(
        stdout.starts_with("not acquired text-lock: held by "),
        "{stdout:?}"
    );
}

#[test]
fn usage_errors_exit_2_and_bad_values_are_reported_as_json() {
    let fixture = Fixture::start();
    for arguments in [
        &["--lock", "k"][..],
        &["--lock", "a", "--unlock", "b"],
        &["--unlock", "k", "--wait", "10"],
        &["--get-lock", "k", "--expires", "10"],
        &["--format", "yaml"],
        &["--lock", "k", "--expires", "soon"],
    ] {
        let output = fixture.run(arguments);
        assert_eq!(exit_code(&output), 2, "{arguments:?}");
        assert!(!output.stderr.is_empty(), "clap explains {arguments:?}");
    }
    let (code, error) = fixture.json(&["--lock", "k", "--expires", "0"]);
    assert_eq!(code, 2, "{error}");
    assert_eq!(error["error"]["code"], "TTL_OUT_OF_RANGE");
    assert_eq!(error["error"]["class"], "client");
    assert_eq!(error["isAcquired"], false);
}

#[test]
fn nobody_listening_exits_3() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let output = cli_command(&address)
        .args(["--lock", "k", "--expires", "1000", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(exit_code(&output), 3);
    let error = one_object(&output);
    assert_eq!(error["error"]["code"], "CANNOT_CONNECT");
    assert_eq!(error["resource"], "k");
    assert_eq!(error["isAcquired"], false);
}

#[test]
fn locks_are_persistent_unless_asked_otherwise() {
    let fixture = Fixture::start();
    let (code, lock) = fixture.json(&["--lock", "durable", "--expires", "60000"]);
    assert_eq!(code, 0, "{lock}");
    let (_, info) = fixture.json(&["--get-lock", "durable"]);
    assert_eq!(info["durability"], "persistent", "{info}");
    let (code, lock) = fixture.json(&[
        "--lock",
        "fast",
        "--expires",
        "60000",
        "--durability",
        "ephemeral",
    ]);
    assert_eq!(code, 0, "{lock}");
    let (_, info) = fixture.json(&["--get-lock", "fast"]);
    assert_eq!(info["durability"], "ephemeral", "{info}");
}

/// Runs the shell with `input` on a pipe; returns its exit code and stdout lines.
fn shell(fixture: &Fixture, format: &str, input: &str) -> (i32, Vec<String>) {
    let mut child = fixture
        .command()
        .args(["--format", format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    (
        exit_code(&output),
        stdout.lines().map(str::to_string).collect(),
    )
}

#[test]
fn the_shell_reads_a_pipe_and_releases_its_locks_on_exit() {
    let fixture = Fixture::start();
    let client = fixture.client();

    // Phase 1: a session in JSON, one object per line.
    let input = "lock shell-a 60000\nget shell-a\nbogus\nextend shell-a 30000\n\
                 lock shell-b 60000 wait 100\nunlock shell-a\nexit\n";
    let (code, lines) = shell(&fixture, "json", input);
    assert_eq!(code, 0, "{lines:?}");
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(objects.len(), 7, "{lines:?}");
    assert_eq!(objects[0]["isAcquired"], true);
    assert_eq!(objects[1]["isLocked"], true);
    assert_eq!(objects[2]["error"]["code"], "USAGE");
    assert_eq!(objects[3]["isExtended"], true);
    assert_eq!(objects[4]["isAcquired"], true);
    assert_eq!(objects[5]["isReleased"], true);
    // The exit released shell-b, the one lock still held.
    assert_eq!(
        (&objects[6]["resource"], &objects[6]["isReleased"]),
        (&Value::from("shell-b"), &Value::Bool(true))
    );
    assert!(!fixture.get(&client, "shell-b").is_locked());

    // Phase 2: text mode, and the end of input works like `exit`.
    let (code, lines) = shell(&fixture, "text", "help\nping\nlock shell-c 60000\n");
    assert_eq!(code, 0);
    let text = lines.join("\n");
    assert!(text.contains("commands:"), "{text}");
    assert!(text.contains("pong"), "{text}");
    assert!(text.contains("acquired shell-c"), "{text}");
    assert!(text.contains("released shell-c"), "{text}");
    assert!(!fixture.get(&client, "shell-c").is_locked());
}

#[test]
fn the_shell_never_releases_a_later_grant_to_its_owner_on_exit() {
    let fixture = Fixture::start();
    let client = fixture.client();

    // Phase 1: the shell takes backup-lock for 200 ms and stays open.
    let mut shell = fixture
        .command()
        .args(["--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = shell.stdin.take().unwrap();
    let mut lines = BufReader::new(shell.stdout.take().unwrap()).lines();
    input.write_all(b"lock backup-lock 200\n").unwrap();
    let locked: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(locked["isAcquired"], true, "{locked}");

    // Phase 2: its lease ends; a script of the same user (same owner) takes the lock.
    let deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..100 {
        if !fixture.get(&client, "backup-lock").is_locked() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !fixture.get(&client, "backup-lock").is_locked(),
        "the lease ends"
    );
    let (code, script) = fixture.json(&["--lock", "backup-lock", "--expires", "60000"]);
    assert_eq!(code, 0, "{script}");
    let script_token = script["fencingToken"].as_u64().unwrap();

    // Phase 3: `exit` answers "not owner" for the shell's grant, and the script keeps its
    // lock.
    input.write_all(b"exit\n").unwrap();
    drop(input);
    let released: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (&released["resource"], &released["status"]),
        (&Value::from("backup-lock"), &Value::from("notOwner")),
        "{released}"
    );
    assert_eq!(released["holder"]["fencingToken"], script_token);
    assert!(lines.next().is_none(), "nothing else is printed");
    assert_eq!(exit_code(&shell.wait_with_output().unwrap()), 0);
    let LockState::Held(held) = fixture.get(&client, "backup-lock") else {
        panic!("the script's lock was released by the shell");
    };
    assert_eq!(held.fencing_token, script_token);
}

const BACKUP_SCRIPT: &str = r#"
IS_BACKUP_RUNNING=$(kahu-cli --lock backup-lock --expires 60000 --format json | jq .isAcquired)
if [ "$IS_BACKUP_RUNNING" = "false" ]; then echo "Backup is already running on another machine!"; exit 1; fi
sleep 2   # the backup
kahu-cli --unlock backup-lock --format json
"#;

fn found_on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn the_backup_script_runs_once_when_started_twice() {
    if !found_on_path("bash") || !found_on_path("jq") {
        eprintln!("skipped: the backup script needs bash and jq on PATH");
        return;
    }
    let fixture = Fixture::start();
    let client = fixture.client();
    let cli_directory = Path::new(CLI).parent().unwrap();
    let path = format!(
        "{}:{}",
        cli_directory.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start_copy = || {
        Command::new("bash")
            .args(["-c", BACKUP_SCRIPT])
            .env("PATH", &path)
            .env("KAHU_ADDR", fixture.address.to_string())
            .env_remove("KAHU_OWNER")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Phase 1: the first copy starts and takes the lock (polled: at most 100 x 50 ms).
    let first = start_copy();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = false;
    for _ in 0..100 {
        if fixture.get(&client, "backup-lock").is_locked() {
            held = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(held, "the first copy takes the lock");

    // Phase 2: the second copy starts while the first is "backing up".
    let second = start_copy().wait_with_output().unwrap();
    let first = first.wait_with_output().unwrap();

    // Phase 3: the second copy refused; the first ran its backup and released the lock.
    let second_stdout = String::from_utf8(second.stdout.clone()).unwrap();
    assert_eq!(exit_code(&second), 1, "{second_stdout}");
    assert_eq!(
        second_stdout,
        "Backup is already running on another machine!\n"
    );
    let first_stdout = String::from_utf8(first.stdout.clone()).unwrap();
    assert_eq!(exit_code(&first), 0, "{first_stdout}");
    assert!(!first_stdout.contains("already running"), "{first_stdout}");
    let unlock: Value = serde_json::from_str(first_stdout.trim()).unwrap();
    assert_eq!(
        unlock["isReleased"], true,
        "the script's last line releases"
    );
    assert!(!fixture.get(&client, "backup-lock").is_locked());
}
