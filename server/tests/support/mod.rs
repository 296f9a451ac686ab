//! Helpers for the process-level cluster fault test (`cluster_faults.rs`): the node
//! processes, the fault-injecting peer proxy, the clients and their history, the checkers.
//!
//! - [`node`]: one run of the real `kahu-server` binary (spawn, listening line, SIGKILL,
//!   SIGSTOP/SIGCONT, the last stderr lines); dropping it SIGKILLs it.
//! - [`proxy`]: a TCP proxy in front of every node's peer port that can cut one node off
//!   from the others (both ways) and heal.
//! - [`traffic`]: clients that route by NOT_LEADER hints and record every request.
//! - [`history`]: the recorded requests, and the exclusion and fencing checkers.

pub mod history;
pub mod node;
pub mod proxy;
pub mod traffic;

use std::time::{Duration, Instant};

/// xorshift64* seeded through splitmix64, so every seed (0 too) gives a good stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low)
    }

    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent stream (for one client).
    pub fn fork(&mut self, stream: u64) -> Rng {
        Rng::new(self.next() ^ stream)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for index in (1..items.len()).rev() {
            let other = self.below(index as u64 + 1) as usize;
            items.swap(index, other);
        }
    }
}

/// Instants printed as seconds since the test started (`t+1.234s`).
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub started: Instant,
}

impl Timeline {
    pub fn at(&self, instant: Instant) -> String {
        format!(
            "t+{:.3}s",
            instant
                .saturating_duration_since(self.started)
                .as_secs_f64()
        )
    }

    pub fn now(&self) -> String {
        self.at(Instant::now())
    }
}

pub fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// A decimal (or `0x` hexadecimal) number from the environment.
pub fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

pub fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
