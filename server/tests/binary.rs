//! The `kahu-server` binary as an operator runs it: flags, the listening line, signals,
//! the data directory lock, and tokens that keep growing across restarts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

struct RunningBinary {
    child: Child,
    address: String,
}

/// Starts the binary on 127.0.0.1 port 0 and reads the address from its listening line.
fn start(data_dir: &std::path::Path) -> RunningBinary {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kahu-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kahu-server");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver
        .recv_timeout(STARTUP_TIMEOUT)
        .expect("a listening line");
    let address = line
        .trim()
        .strip_prefix("kahu-server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    RunningBinary { child, address }
}

impl RunningBinary {
    /// Sends text-mode lines and returns the reply lines.
    fn text(&self, lines: &[&str]) -> Vec<String> {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut input = lines.join("\r\n");
        input.push_str("\r\nQUIT\r\n");
        stream.write_all(input.as_bytes()).unwrap();
        let mut output = String::new();
        stream
            .read_to_string(&mut output)
            .expect("replies until QUIT");
        output.lines().map(str::to_string).collect()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kahu-server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(line: &str) -> u64 {
    line.split(' ')
        .find_map(|word| word.strip_prefix("token="))
        .unwrap_or_else(|| panic!("no token in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn sigterm_stops_the_server_with_exit_code_zero() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = start(data_dir.path());
    let replies = server.text(&["PING"]);
    assert_eq!(replies, ["PONG"]);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_second_server_on_the_same_data_dir_exits_with_a_clear_message() {
    let data_dir = tempfile::tempdir().unwrap();
    let first = start(data_dir.path());
    let second = Command::new(env!("CARGO_BIN_EXE_kahu-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .expect("run a second server");
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another kahu-server"), "{stderr}");
    assert_eq!(first.terminate().code(), Some(0));
}

#[test]
fn fencing_tokens_keep_growing_across_restarts() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for run in 0..3 {
        let server = start(data_dir.path());
        // Persistent and ephemeral grants share the per-lock order; each run lets go at the
        // end (a persistent lock would otherwise still be held after the restart).
        let replies = server.text(&[
            "LOCK deploy 60000",
            "UNLOCK deploy",
            "LOCK deploy 60000 EPHEMERAL",
            "UNLOCK deploy",
        ]);
        let first = token(&replies[0]);
        let second = token(&replies[2]);
        assert!(
            first > last,
            "run {run}: {first} is not above {last} from the previous run"
        );
        assert!(second > first);
        last = second;
        assert_eq!(server.terminate().code(), Some(0));
    }
}

#[test]
fn bad_flags_are_refused_before_starting() {
    let output = Command::new(env!("CARGO_BIN_EXE_kahu-server"))
        .args([
            "--shards",
            "100000",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--shards 100000"));

    let output = Command::new(env!("CARGO_BIN_EXE_kahu-server"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
}
