//! One run of the real `kahu-server` binary.
//!
//! [`NodeProcess::start`] spawns it and waits (bounded) for its listening line; both output
//! pipes are drained for the life of the process, so it never blocks on a full pipe, and
//! the last stderr lines go to a [`StderrTail`] that outlives the run (so a failure shows
//! what a killed run said before it died). Dropping a `NodeProcess` SIGKILLs and reaps it,
//! also when the test panics, and also when it is stopped (SIGKILL ends a stopped
//! process).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines kept per node, over all its runs.
const STDERR_LINES_KEPT: usize = 40;

/// The last lines a node wrote to stderr, over all its runs.
#[derive(Clone, Debug, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    pub fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        if lines.len() == STDERR_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The lines, indented, or `(nothing)`.
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        if lines.is_empty() {
            return "      (nothing)".to_string();
        }
        lines
            .iter()
            .map(|line| format!("      {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A running (or stopped) `kahu-server` process.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    stderr: StderrTail,
}

impl NodeProcess {
    /// Spawns the binary with `args` and waits up to `timeout` for its listening line.
    pub fn start(
        args: &[OsString],
        stderr: &StderrTail,
        timeout: Duration,
    ) -> Result<NodeProcess, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kahu-server"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot spawn kahu-server: {error}"))?;
        let pipe = child.stderr.take().expect("piped stderr");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
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
        let mut process = NodeProcess {
            child,
            stderr: stderr.clone(),
        };
        let line = receiver.recv_timeout(timeout).unwrap_or_default();
        if line.starts_with("kahu-server listening on ") {
            return Ok(process);
        }
        let status = process.exit_status_soon();
        Err(format!(
            "kahu-server did not print its listening line within {timeout:?} (first line \
             {line:?}, {status}); its stderr:\n{}",
            process.stderr.text()
        ))
    }

    /// SIGKILL, then reap. An error if the process had already exited: a crash the test
    /// did not cause.
    pub fn sigkill(&mut self) -> Result<(), String> {
        self.check_alive()?;
        self.child
            .kill()
            .map_err(|error| format!("cannot kill kahu-server: {error}"))?;
        self.child
            .wait()
            .map_err(|error| format!("cannot reap kahu-server: {error}"))?;
        Ok(())
    }

    /// SIGSTOP: the process stops at once, its sockets stay open, nothing it holds is
    /// released; the kernel keeps accepting connections and buffering bytes for it.
    pub fn pause(&mut self) -> Result<(), String> {
        self.check_alive()?;
        signal(self.child.id(), libc::SIGSTOP)
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&mut self) -> Result<(), String> {
        self.check_alive()?;
        signal(self.child.id(), libc::SIGCONT)
    }

    /// An error if the process exited by itself.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "kahu-server exited by itself ({status}); its stderr:\n{}",
                self.stderr.text()
            )),
            Err(error) => Err(format!("cannot query kahu-server: {error}")),
        }
    }

    /// How a process that failed to start ended, waiting a little for it to exit.
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
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to our own child process `pid`.
#[allow(unsafe_code)]
fn signal(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} does not fit pid_t"))?;
    // SAFETY: kill(2) reads no memory of ours. `pid` is a child this process has not reaped
    // yet (every `NodeProcess` reaps its child only in `sigkill` or `drop`, after which it
    // sends no signal), so the pid cannot have been reused by another process.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}
