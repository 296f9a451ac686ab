//! Per-client settings: timeouts, reconnect policy, the retry budget of a request across a
//! cluster, the name sent in HELLO and the default owner. Each setting has a documented
//! default; [`ClientOptions::default`] is what [`crate::Client::connect`] uses.
//!
//! Settings are checked when a client is built ([`ClientOptions::validate`]), so a bad value
//! fails at `connect`, not at the first request.

use std::time::Duration;

use bytes::Bytes;
use kahu_protocol::limits::CLIENT_NAME_BYTES_MAX;
use kahu_protocol::request::validate_owner;
use kahu_protocol::{ErrorCode, ProtocolError};

/// How a [`crate::Client`] talks to its server. Build with the setter methods:
///
/// ```
/// use std::time::Duration;
/// let options = kahu_client::ClientOptions::default()
///     .request_timeout(Duration::from_secs(2))
///     .owner("billing-worker-7");
/// options.validate().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) connect_attempts_max: u32,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    pub(crate) client_name: String,
    pub(crate) owner: Option<Bytes>,
    pub(crate) route_attempts_max: u32,
    pub(crate) route_time_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: ClientOptions::REQUEST_TIMEOUT_DEFAULT,
            connect_timeout: ClientOptions::CONNECT_TIMEOUT_DEFAULT,
            connect_attempts_max: ClientOptions::CONNECT_ATTEMPTS_MAX_DEFAULT,
            reconnect_backoff: ClientOptions::RECONNECT_BACKOFF_DEFAULT,
            reconnect_backoff_max: ClientOptions::RECONNECT_BACKOFF_MAX_DEFAULT,
            client_name: format!("kahu-client/{}", env!("CARGO_PKG_VERSION")),
            owner: None,
            route_attempts_max: ClientOptions::ROUTE_ATTEMPTS_MAX_DEFAULT,
            route_time_max: ClientOptions::ROUTE_TIME_MAX_DEFAULT,
        }
    }
}

impl ClientOptions {
    /// Default time to wait for a reply, not counting a LOCK's own wait.
    pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
    /// Default time for one connection attempt: TCP connect plus the HELLO exchange.
    pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
    /// Default number of connection attempts before a request fails with
    /// [`crate::Error::Connect`].
    pub const CONNECT_ATTEMPTS_MAX_DEFAULT: u32 = 3;
    /// Default pause after the first failed attempt; it doubles after each failure.
    pub const RECONNECT_BACKOFF_DEFAULT: Duration = Duration::from_millis(50);
    /// Default cap on the pause between attempts.
    pub const RECONNECT_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(1);
    /// Default number of attempts of one request across a cluster's nodes.
    pub const ROUTE_ATTEMPTS_MAX_DEFAULT: u32 = 32;
    /// Default time after a request's first attempt within which it may be sent again.
    pub const ROUTE_TIME_MAX_DEFAULT: Duration = Duration::from_secs(5);

    /// How long to wait for each reply (default 5 s). A LOCK that waits on the server gets
    /// its wait on top of this. A request that times out may still be applied.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one connection attempt (TCP connect and HELLO) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times to try to connect before failing a request (default 3, at least 1).
    pub fn connect_attempts_max(mut self, attempts: u32) -> Self {
        self.connect_attempts_max = attempts;
        self
    }

    /// The pause after the first failed connection attempt (default 50 ms) and its cap
    /// (default 1 s); the pause doubles after each failure.
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_backoff = first;
        self.reconnect_backoff_max = max;
        self
    }

    /// The name sent in HELLO, shown in the server's logs (default `kahu-client/<version>`).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// The owner of every lock that does not name one, shared by all of them on purpose: a
    /// LOCK by this owner for a lock it already holds is an idempotent re-acquire (same
    /// token, lease reset), from any clone, client or process. Set a stable owner to take
    /// back your own locks after a restart, or to release them by key and owner.
    ///
    /// Default: none. Each `Client` then makes a unique base owner
    /// (`host-pid-start-client`) and each acquire takes the lock as `<base>-<n>`, kept for
    /// that acquire's own retries, so no two acquires share a lock by accident, even two
    /// tasks sharing one `Client`.
    pub fn owner(mut self, owner: impl Into<Bytes>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How many times one request may be sent across a cluster's nodes, the first time
    /// included (default 32, at least 1): each NOT_LEADER hint followed, each retry after a
    /// NOT_LEADER that names no leader, each move to another node after a failed connection
    /// counts. When they are spent the caller gets the last answer's error
    /// ([`crate::Error::is_not_leader`] or [`crate::Error::is_connect`]). See
    /// [`crate::Client::connect_cluster`] for the rules.
    pub fn route_attempts_max(mut self, attempts: u32) -> Self {
        self.route_attempts_max = attempts;
        self
    }

    /// How long after its first attempt a request may still be sent again to another node,
    /// or to the same one after a pause (default 5 s); a LOCK gets its wait on top. Each
    /// attempt still waits at most [`ClientOptions::request_timeout`] for its reply, so a
    /// call takes at most about `route_time_max + request_timeout` (plus a LOCK's wait).
    pub fn route_time_max(mut self, time: Duration) -> Self {
        self.route_time_max = time;
        self
    }

    /// The pause before connection attempt number `attempt` (1 for the second attempt).
    pub(crate) fn backoff_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.reconnect_backoff
            .saturating_mul(1 << doublings)
            .min(self.reconnect_backoff_max)
    }

    /// Checks every setting: timeouts above zero, at least one attempt (to connect, and per
    /// request), a client name within `client_name_bytes_max`, an owner within
    /// `owner_bytes_max`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |message: String| ProtocolError::new(ErrorCode::Malformed, message);
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout must be above zero".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout must be above zero".into()));
        }
        if self.connect_attempts_max == 0 {
            return Err(invalid("connect_attempts_max must be at least 1".into()));
        }
        if self.route_attempts_max == 0 {
            return Err(invalid("route_attempts_max must be at least 1".into()));
        }
        if self.client_name.len() > CLIENT_NAME_BYTES_MAX {
            return Err(invalid(format!(
                "client_name is {} bytes; client_name_bytes_max is {CLIENT_NAME_BYTES_MAX}",
                self.client_name.len()
            )));
        }
        if let Some(owner) = &self.owner {
            validate_owner(owner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let options = ClientOptions::default();
        options.validate().unwrap();
        assert_eq!(options.request_timeout, Duration::from_secs(5));
        assert!(options.owner.is_none());
        assert!(options.client_name.starts_with("kahu-client/"));
        assert_eq!(options.route_attempts_max, 32);
        assert_eq!(options.route_time_max, Duration::from_secs(5));
    }

    #[test]
    fn bad_settings_are_refused_before_connecting() {
        let zero = ClientOptions::default().request_timeout(Duration::ZERO);
        assert!(zero.validate().is_err());
        let no_attempts = ClientOptions::default().connect_attempts_max(0);
        assert!(no_attempts.validate().is_err());
        let no_route = ClientOptions::default().route_attempts_max(0);
        assert!(no_route.validate().is_err());
        let empty_owner = ClientOptions::default().owner("");
        assert_eq!(
            empty_owner.validate().unwrap_err().code,
            ErrorCode::OwnerEmpty
        );
        let long_name = ClientOptions::default().client_name("n".repeat(CLIENT_NAME_BYTES_MAX + 1));
        assert!(long_name.validate().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let options = ClientOptions::default()
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50));
        let pauses: Vec<u128> = (1..=5)
            .map(|attempt| options.backoff_before(attempt).as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 50, 50]);
        assert_eq!(options.backoff_before(u32::MAX), Duration::from_millis(50));
    }
}
