//! The `recovery` workload: how long a restarted server takes to serve again when its log
//! holds many live persistent locks.
//!
//! Writes a data directory whose single shard's log holds `locks` grants (through the
//! server's own log code, in commits of 10,000), starts the real `kahu-server` on it, and
//! measures the time from spawning the process to its first answer; then checks that a
//! lock from the log is held with its token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_server::wal::record::{Command, Entry};
use kahu_server::wal::snapshot::Snapshot;
use kahu_server::wal::storage::FileStorage;
use kahu_server::wal::{Replay, Wal, WalOptions};

struct Nothing;

impl Replay for Nothing {
    fn restore(&mut self, _: &Snapshot) {}
    fn apply(&mut self, _: Entry) {}
}

/// Where `kahu-server` is: `--server-bin`, else beside this benchmark's own executable.
pub fn server_binary(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        let me = std::env::current_exe().expect("own path");
        me.with_file_name("kahu-server")
    })
}

pub fn run(locks: u64, server: &Path, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(".")?;
    std::fs::write(dir.path().join("shards"), "1\n")?;
    std::fs::write(dir.path().join("epoch"), "1\n")?;
    let written = Instant::now();
    let mut wal = Wal::open(
        &dir.path().join("shard-0"),
        Arc::new(FileStorage),
        WalOptions {
            snapshot_log_bytes: u64::MAX,
            ..WalOptions::default()
        },
        &mut Nothing,
    )?;
    for number in 0..locks {
        wal.append_command(
            1,
            Command::Grant {
                key: Bytes::from(format!("recovery-lock-{number}")),
                owner: Bytes::from(format!("worker-{}", number % 64)),
                token: (1 << 40) | (number + 1),
                ttl_ms: 600_000,
            },
        );
        if number % 10_000 == 9_999 {
            wal.commit()?;
        }
    }
    wal.commit()?;
    drop(wal);
    let log_bytes: u64 = std::fs::read_dir(dir.path().join("shard-0"))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("wal-"))
        .map(|entry| entry.metadata().map_or(0, |metadata| metadata.len()))
        .sum();
    let write_ms = written.elapsed().as_millis();

    let started = Instant::now();
    let mut child = Process::new(server)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", server.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("kahu-server listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .to_string();
    let mut stream = TcpStream::connect(&address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let probe = locks / 2;
    stream.write_all(format!("GET recovery-lock-{probe}\r\nQUIT\r\n").as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let serving_ms = started.elapsed().as_secs_f64() * 1000.0;
    let _ = child.kill();
    let _ = child.wait();
    let expected = format!("token={}", (1u64 << 40) | (probe + 1));
    if !reply.contains(&expected) {
        return Err(format!("lock {probe} not recovered: {reply:?}").into());
    }
    if json {
        println!(
            "{{\"workload\":\"recovery\",\"locks\":{locks},\"log_bytes\":{log_bytes},\"serving_ms\":{serving_ms:.1}}}"
        );
    } else {
        println!(
            "workload=recovery locks={locks} log_bytes={log_bytes} (written in {write_ms} ms)"
        );
        println!(
            "serving_ms={serving_ms:.1} (process start to first answer, a recovered lock checked)"
        );
    }
    Ok(())
}
