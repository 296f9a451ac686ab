//! Default names: the host name, the user name, and the owners a [`crate::Client`] uses when
//! none is given.
//!
//! An owner is what makes a LOCK by the current holder an idempotent re-acquire, so two
//! acquires must never share a default owner by accident: not two processes, not two
//! clients, not two tasks sharing one client. The library's default is unique per acquire:
//! `host-pid-start-client-acquire`, where `start` (the process start time) keeps a recycled
//! pid from taking over a dead process's unexpired lease, `client` counts the clients of
//! this process and `acquire` the acquires of that client. The CLI chooses the opposite on
//! purpose (a stable `user@host`, see `kahu-cli --help`).
//!
//! Everything here is best effort and never fails: a missing host name becomes `localhost`,
//! a missing user name `unknown`. No `unsafe` (the workspace forbids it), so no
//! `gethostname(2)`; the kernel's and the system's files and commands are enough.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use kahu_protocol::limits::OWNER_BYTES_MAX;

/// The longest suffix [`acquire_owner`] adds to a base: `-` and a u64 in decimal.
const ACQUIRE_SUFFIX_BYTES_MAX: usize = 1 + 20;

/// The name of this host: `$HOSTNAME`, the kernel's (`/proc/sys/kernel/hostname`),
/// `/etc/hostname`, then the `hostname` command; `localhost` when all fail. Computed once.
pub fn host_name() -> &'static str {
    static HOST_NAME: OnceLock<String> = OnceLock::new();
    HOST_NAME.get_or_init(|| {
        let candidates = [
            std::env::var("HOSTNAME").ok(),
            std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
            std::fs::read_to_string("/etc/hostname").ok(),
            command_output("hostname", &[]),
        ];
        first_word(candidates).unwrap_or_else(|| "localhost".to_string())
    })
}

/// The name of the user running this process: `$USER`, `$LOGNAME`, `$USERNAME`, then
/// `id -un`; `unknown` when all fail. Computed once.
pub fn user_name() -> &'static str {
    static USER_NAME: OnceLock<String> = OnceLock::new();
    USER_NAME.get_or_init(|| {
        let candidates = [
            std::env::var("USER").ok(),
            std::env::var("LOGNAME").ok(),
            std::env::var("USERNAME").ok(),
            command_output("id", &["-un"]),
        ];
        first_word(candidates).unwrap_or_else(|| "unknown".to_string())
    })
}

/// A new base owner, different from every other base this process or any other process on
/// this host makes: `host-pid-start-client`. Short enough that [`acquire_owner`] can add
/// any suffix within `owner_bytes_max`.
pub(crate) fn unique_owner_base() -> Bytes {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PROCESS_START: OnceLock<u64> = OnceLock::new();
    let start = *PROCESS_START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64)
    });
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let owner = format!("{}-{}-{start:x}-{counter}", host_name(), std::process::id());
    Bytes::from(truncate(owner, OWNER_BYTES_MAX - ACQUIRE_SUFFIX_BYTES_MAX))
}

/// The owner of acquire number `acquire` of the client whose base is `base`:
/// `<base>-<acquire>`. Distinct bases and distinct numbers give distinct owners.
pub(crate) fn acquire_owner(base: &[u8], acquire: u64) -> Bytes {
    let suffix = format!("-{acquire}");
    let mut owner = BytesMut::with_capacity(base.len() + suffix.len());
    owner.put_slice(base);
    owner.put_slice(suffix.as_bytes());
    owner.freeze()
}

fn command_output(program: &str, arguments: &[&str]) -> Option<String> {
    let output = Command::new(program).args(arguments).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()
}

/// The first candidate that is a non-empty word once trimmed.
fn first_word(candidates: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|text| text.trim().to_string())
        .find(|text| !text.is_empty() && !text.contains(char::is_whitespace))
}

/// Cuts `text` to at most `max` bytes at a character boundary. Owners are bounded by
/// `owner_bytes_max`; a very long host name must not make the default owner invalid.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_owners_differ_and_are_valid() {
        let first = unique_owner_base();
        let second = unique_owner_base();
        assert_ne!(first, second);
        kahu_protocol::request::validate_owner(&first).unwrap();
        let text = std::str::from_utf8(&first).unwrap();
        assert!(text.starts_with(host_name()), "{text}");
        assert!(
            text.contains(&format!("-{}-", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn acquire_owners_extend_the_base_and_stay_within_the_limit() {
        let base = unique_owner_base();
        let first = acquire_owner(&base, 0);
        assert_eq!(&first[..base.len()], &base[..]);
        assert_eq!(&first[base.len()..], b"-0");
        assert_ne!(first, acquire_owner(&base, 1));

        let longest_base = truncate(
            "h".repeat(OWNER_BYTES_MAX * 2),
            OWNER_BYTES_MAX - ACQUIRE_SUFFIX_BYTES_MAX,
        );
        let longest = acquire_owner(longest_base.as_bytes(), u64::MAX);
        assert_eq!(longest.len(), OWNER_BYTES_MAX);
        kahu_protocol::request::validate_owner(&longest).unwrap();
    }

    #[test]
    fn names_are_single_non_empty_words() {
        for name in [host_name(), user_name()] {
            assert!(!name.is_empty());
            assert!(!name.contains(char::is_whitespace), "{name:?}");
        }
    }

    #[test]
    fn first_word_skips_missing_blank_and_spaced_candidates() {
        let candidates = [
            None,
            Some("  \n".into()),
            Some("two words".into()),
            Some(" vm\n".into()),
        ];
        assert_eq!(first_word(candidates).as_deref(), Some("vm"));
        assert_eq!(first_word([None, None]), None);
    }

    #[test]
    fn truncate_keeps_characters_whole() {
        assert_eq!(truncate("abc".into(), 5), "abc");
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("héllo".into(), 3), "hé");
    }
}
