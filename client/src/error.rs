//! The client's one error type.
//!
//! Every failure a caller can see is an [`Error`], and every `Error` answers the three
//! questions a caller has (STYLE.md, "Errors"):
//! - [`Error::is_retryable`]: may the same request succeed if sent again?
//! - [`Error::is_timeout`]: did the client stop waiting for a reply?
//! - [`Error::is_not_leader`]: should the request go to another node?
//!
//! Server ERROR replies keep their wire code, class and message ([`Error::Server`]); errors
//! the client finds itself get a class too ([`Error::class`]), so the CLI and logs can show
//! every error in one shape: `code`, `class`, `message`.
//!
//! Not being granted a lock is not an error: [`crate::LockGuard::is_acquired`] says so.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use kahu_protocol::{ErrorClass, ErrorCode, ErrorReply, ProtocolError};

/// Everything that can go wrong between a call on [`crate::Client`] and its reply.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request breaks a protocol limit (empty key, ttl out of range, ...). Found by the
    /// client before sending; the server would refuse it with the same code.
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] ProtocolError),

    /// No connection could be made to the server (TCP connect or HELLO failed) within the
    /// configured attempts. Nothing was sent.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        address: String,
        reason: String,
        #[source]
        source: Option<Arc<std::io::Error>>,
    },

    /// The connection broke while the request was in flight. The request may or may not
    /// have been applied; the next request reconnects.
    #[error("connection lost ({reason}); the request may or may not have been applied")]
    ConnectionLost { reason: String },

    /// No reply came within the request timeout (plus the lock wait, for LOCK). The request
    /// may or may not have been applied.
    #[error("no reply within {0:?}; the request may or may not have been applied")]
    Timeout(Duration),

    /// The server refused the request with an ERROR reply.
    #[error("{}: {} ({} error)", .0.code_name(), .0.message, .0.class.name())]
    Server(ErrorReply),

    /// The server sent something this client does not understand (a reply that does not
    /// decode, or that does not answer the request). The connection is dropped.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The client's connection task is gone, which happens only when the tokio runtime
    /// that ran [`crate::Client::connect`] has shut down.
    #[error("the client's connection task has stopped (its tokio runtime shut down)")]
    Closed,

    /// A membership change of every shard ([`crate::Client::add_node`],
    /// [`crate::Client::remove_node`]) failed on `shard`, with `source`: shards 0 to
    /// `shard - 1` were changed, the others were not. The change is idempotent, so making
    /// the same change again finishes the job. Its class, code and the three questions are
    /// those of `source`.
    #[error("{}: {source}", membership_context(.action, *.node, *.shard, *.shard_count))]
    MembershipIncomplete {
        /// `add` or `remove`.
        action: &'static str,
        node: u64,
        /// The shard the change failed on, which is also how many shards were changed.
        shard: u16,
        shard_count: u16,
        source: Box<Error>,
    },
}

/// What an [`Error::MembershipIncomplete`] says before its cause: what stopped where, what
/// was done, and what to do.
fn membership_context(action: &str, node: u64, shard: u16, shard_count: u16) -> String {
    let changed = match shard {
        0 => "no shard was changed".to_string(),
        1 => "shard 0 was changed".to_string(),
        _ => format!("shards 0 to {} were changed", shard - 1),
    };
    format!(
        "{action} node {node} stopped at shard {shard} of {shard_count} ({changed}; the change \
         is idempotent: make it again to finish the job)"
    )
}

impl Error {
    /// True when sending the same request again may succeed: the server was unreachable,
    /// the connection broke, the reply timed out, or the server answered with a retryable
    /// code (TOO_MANY_WAITERS, SHUTTING_DOWN, ...).
    ///
    /// Retrying LOCK (without `if_not_held`) with the same owner, EXTEND, GET, PING and
    /// INFO is safe: a LOCK by the current holder is an idempotent re-acquire (same token).
    /// `acquire` does this itself within its wait. A new `acquire` with the default owner is
    /// a new owner: a grant the failed one may have left ends with its lease; name an owner
    /// ([`crate::LockBuilder::owner`]) to retry across acquires. A retried UNLOCK whose
    /// first copy was applied answers "not held".
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// True when the client stopped waiting for a reply ([`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::MembershipIncomplete { source, .. } => source.is_timeout(),
            error => matches!(error, Error::Timeout(_)),
        }
    }

    /// True when the server cannot serve this key and another node can (NOT_LEADER).
    pub fn is_not_leader(&self) -> bool {
        self.class() == ErrorClass::NotLeader
    }

    /// True when no connection could be made ([`Error::Connect`]).
    pub fn is_connect(&self) -> bool {
        match self {
            Error::MembershipIncomplete { source, .. } => source.is_connect(),
            error => matches!(error, Error::Connect { .. }),
        }
    }

    /// What a caller should do with this error, in the wire protocol's classes.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidRequest(_) | Error::Closed => ErrorClass::Client,
            Error::Connect { .. } | Error::ConnectionLost { .. } | Error::Timeout(_) => {
                ErrorClass::Retryable
            }
            Error::Server(reply) => reply.class,
            Error::Protocol(_) => ErrorClass::Server,
            Error::MembershipIncomplete { source, .. } => source.class(),
        }
    }

    /// The wire error code, for [`Error::InvalidRequest`] and [`Error::Server`] with a code
    /// this version knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::InvalidRequest(error) => Some(error.code),
            Error::Server(reply) => reply.code,
            Error::MembershipIncomplete { source, .. } => source.code(),
            _ => None,
        }
    }

    /// An upper-case name for the error: the wire code's name (`KEY_EMPTY`, `UNSUPPORTED`,
    /// ...) or one of the client's own: `CANNOT_CONNECT`, `CONNECTION_LOST`, `TIMEOUT`,
    /// `PROTOCOL_ERROR`, `CLIENT_CLOSED`.
    pub fn code_name(&self) -> Cow<'static, str> {
        match self {
            Error::InvalidRequest(error) => Cow::Borrowed(error.code.name()),
            Error::Connect { .. } => Cow::Borrowed("CANNOT_CONNECT"),
            Error::ConnectionLost { .. } => Cow::Borrowed("CONNECTION_LOST"),
            Error::Timeout(_) => Cow::Borrowed("TIMEOUT"),
            Error::Server(reply) => match reply.code {
                Some(code) => Cow::Borrowed(code.name()),
                None => Cow::Owned(reply.code_name()),
            },
            Error::Protocol(_) => Cow::Borrowed("PROTOCOL_ERROR"),
            Error::Closed => Cow::Borrowed("CLIENT_CLOSED"),
            Error::MembershipIncomplete { source, .. } => source.code_name(),
        }
    }

    /// The message for a person, without the code and class.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            Error::InvalidRequest(error) => Cow::Borrowed(&error.message),
            Error::Server(reply) => Cow::Borrowed(&reply.message),
            Error::MembershipIncomplete {
                action,
                node,
                shard,
                shard_count,
                source,
            } => Cow::Owned(format!(
                "{}: {}",
                membership_context(action, *node, *shard, *shard_count),
                source.message()
            )),
            other => Cow::Owned(other.to_string()),
        }
    }

    pub(crate) fn connect(address: &str, reason: impl Into<String>) -> Error {
        Error::Connect {
            address: address.to_string(),
            reason: reason.into(),
            source: None,
        }
    }

    pub(crate) fn connect_io(address: &str, error: std::io::Error) -> Error {
        Error::Connect {
            address: address.to_string(),
            reason: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }

    pub(crate) fn connection_lost(reason: impl Into<String>) -> Error {
        Error::ConnectionLost {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> Error {
        Error::Server(ProtocolError::new(code, "refused").into())
    }

    #[test]
    fn classes_drive_the_three_questions() {
        let retryable = [
            Error::connect("127.0.0.1:1", "refused"),
            Error::connection_lost("reset"),
            Error::Timeout(Duration::from_secs(5)),
            server(ErrorCode::TooManyWaiters),
            server(ErrorCode::ShuttingDown),
        ];
        for error in &retryable {
            assert!(error.is_retryable(), "{error}");
            assert!(!error.is_not_leader(), "{error}");
        }
        let final_errors = [
            Error::InvalidRequest(ProtocolError::new(ErrorCode::KeyEmpty, "key is empty")),
            server(ErrorCode::Unsupported),
            server(ErrorCode::Internal),
            Error::Protocol("garbage".into()),
            Error::Closed,
        ];
        for error in &final_errors {
            assert!(!error.is_retryable(), "{error}");
            assert!(!error.is_timeout(), "{error}");
        }
        assert!(Error::Timeout(Duration::from_secs(1)).is_timeout());
        assert!(server(ErrorCode::NotLeader).is_not_leader());
        assert!(Error::connect("a:1", "refused").is_connect());
    }

    #[test]
    fn server_errors_keep_code_class_and_message() {
        let error = server(ErrorCode::Unsupported);
        assert_eq!(error.code(), Some(ErrorCode::Unsupported));
        assert_eq!(error.code_name(), "UNSUPPORTED");
        assert_eq!(error.class(), ErrorClass::Client);
        assert_eq!(error.message(), "refused");
        assert_eq!(error.to_string(), "UNSUPPORTED: refused (client error)");

        let unknown = Error::Server(ErrorReply {
            code: None,
            raw_code: 4242,
            class: ErrorClass::Retryable,
            message: "later".into(),
        });
        assert_eq!(unknown.code_name(), "ERROR_4242");
        assert!(unknown.is_retryable());
    }

    #[test]
    fn client_side_errors_have_names() {
        assert_eq!(
            Error::connect("a:1", "refused").code_name(),
            "CANNOT_CONNECT"
        );
        assert_eq!(Error::connection_lost("x").code_name(), "CONNECTION_LOST");
        assert_eq!(Error::Timeout(Duration::ZERO).code_name(), "TIMEOUT");
        assert_eq!(Error::Closed.code_name(), "CLIENT_CLOSED");
    }

    #[test]
    fn an_incomplete_membership_change_names_its_shard_and_answers_as_its_cause() {
        let stopped = |shard, source| Error::MembershipIncomplete {
            action: "add",
            node: 4,
            shard,
            shard_count: 4,
            source: Box::new(source),
        };

        // Phase 1: a NOT_LEADER on shard 2: shards 0 and 1 were changed.
        let error = stopped(2, server(ErrorCode::NotLeader));
        assert!(error.is_not_leader());
        assert_eq!(error.code(), Some(ErrorCode::NotLeader));
        assert_eq!(error.code_name(), "NOT_LEADER");
        assert_eq!(
            error.message(),
            "add node 4 stopped at shard 2 of 4 (shards 0 to 1 were changed; the change is \
             idempotent: make it again to finish the job): refused"
        );
        assert!(
            error
                .to_string()
                .ends_with(": NOT_LEADER: refused (not-leader error)"),
            "{error}"
        );

        // Phase 2: the cause's questions come through.
        let timeout = stopped(1, Error::Timeout(Duration::from_secs(5)));
        assert!(timeout.is_timeout() && timeout.is_retryable());
        assert!(
            timeout.message().contains("(shard 0 was changed;"),
            "{timeout}"
        );
        let connect = stopped(0, Error::connect("a:1", "refused"));
        assert!(connect.is_connect());
        assert!(
            connect.message().contains("(no shard was changed;"),
            "{connect}"
        );
    }
}
