//! The text debug mode: one command per line, one reply line per command, for a person at
//! `nc localhost 8002` or `telnet`.
//!
//! ```text
//! LOCK key ttl_ms [OWNER owner] [WAIT wait_ms] [EPHEMERAL|PERSISTENT]
//! UNLOCK key [OWNER owner] [TOKEN token]
//! EXTEND key ttl_ms [OWNER owner] [TOKEN token]
//! GET key
//! MEMBERS ADD shard node peer_addr/client_addr
//! MEMBERS REMOVE shard node
//! PING | INFO | HELP | QUIT
//! ```
//!
//! Command and option words are case-insensitive; keys and owners are taken as typed
//! (whitespace separates words, so they cannot contain spaces in this mode). Lines end in LF
//! or CRLF. An owner defaults to one chosen per connection, so a session can LOCK and UNLOCK
//! without naming it. Replies start with an upper-case word (`ACQUIRED`, `BUSY`, `ERR`, ...)
//! followed by `name=value` pairs. MEMBERS (an operator's command, see [`crate::members`])
//! answers `MEMBERS shard=<s> voters=<n>,<n>,...` once the change is committed.
//!
//! Parsing produces the same [`Request`] as a binary frame and applies the same limits.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::error::{ErrorCode, ProtocolError};
use crate::members::{MemberChange, Members};
use crate::request::{Durability, Extend, Get, Lock, Request, Unlock};
use crate::response::Response;

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextCommand {
    Request(Request),
    Help,
    Quit,
    /// An empty line: no reply.
    Empty,
}

/// The reply to HELP, one line.
pub const HELP: &str = "COMMANDS LOCK key ttl_ms [OWNER o] [WAIT ms] [EPHEMERAL|PERSISTENT] | \
UNLOCK key [OWNER o] [TOKEN t] | EXTEND key ttl_ms [OWNER o] [TOKEN t] | GET key | \
MEMBERS ADD shard node peer_addr/client_addr | MEMBERS REMOVE shard node | PING | INFO | HELP | \
QUIT";

/// How MEMBERS is written, for its usage errors.
const MEMBERS_USAGE: &str =
    "MEMBERS ADD shard node peer_addr/client_addr | MEMBERS REMOVE shard node";

/// Parses one line (without its terminator). `default_owner` is used when no OWNER is given.
/// `default_durability` applies when neither EPHEMERAL nor PERSISTENT is given.
pub fn parse_line(
    line: &str,
    default_owner: &Bytes,
    default_durability: Durability,
) -> Result<TextCommand, ProtocolError> {
    let mut words = line.split_ascii_whitespace();
    let Some(command) = words.next() else {
        return Ok(TextCommand::Empty);
    };
    let words: Vec<&str> = words.collect();
    let upper = command.to_ascii_uppercase();
    let request = match upper.as_str() {
        "LOCK" => {
            let (key, ttl_ms, rest) = key_and_number(&words, "LOCK", "ttl_ms")?;
            let options = Options::parse(rest, &["OWNER", "WAIT"], true)?;
            Request::Lock(Lock {
                key,
                ttl_ms,
                owner: options.owner.unwrap_or_else(|| default_owner.clone()),
                wait_ms: options.wait_ms.unwrap_or(0),
                durability: options.durability.unwrap_or(default_durability),
                if_not_held: false,
            })
        }
        "UNLOCK" => {
            let (key, rest) = key_only(&words, "UNLOCK")?;
            let options = Options::parse(rest, &["OWNER", "TOKEN"], false)?;
            Request::Unlock(Unlock {
                key,
                owner: options.owner.unwrap_or_else(|| default_owner.clone()),
                token: options.token,
            })
        }
        "EXTEND" => {
            let (key, ttl_ms, rest) = key_and_number(&words, "EXTEND", "ttl_ms")?;
            let options = Options::parse(rest, &["OWNER", "TOKEN"], false)?;
            Request::Extend(Extend {
                key,
                ttl_ms,
                owner: options.owner.unwrap_or_else(|| default_owner.clone()),
                token: options.token,
            })
        }
        "GET" => {
            let (key, rest) = key_only(&words, "GET")?;
            Options::parse(rest, &[], false)?;
            Request::Get(Get { key })
        }
        "MEMBERS" => Request::Members(parse_members(&words)?),
        "PING" | "INFO" | "HELP" | "QUIT" | "EXIT" => {
            if let Some(extra) = words.first() {
                return Err(usage(format!("{upper} takes no arguments, got `{extra}`")));
            }
            match upper.as_str() {
                "PING" => Request::Ping,
                "INFO" => Request::Info,
                "HELP" => return Ok(TextCommand::Help),
                _ => return Ok(TextCommand::Quit),
            }
        }
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownCommand,
                format!("unknown command `{command}`; try HELP"),
            ))
        }
    };
    request.validate()?;
    Ok(TextCommand::Request(request))
}

fn usage(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Malformed, message)
}

/// `ADD shard node address` or `REMOVE shard node`, after the word MEMBERS. A missing or
/// extra word is `MALFORMED`; a value that is not a shard, a node id or an address is
/// `BAD_MEMBERSHIP`, as in the binary protocol (node 0 and the address are checked by
/// [`Request::validate`]).
fn parse_members(words: &[&str]) -> Result<Members, ProtocolError> {
    let bad = |message: String| ProtocolError::new(ErrorCode::BadMembership, message);
    let Some((action, rest)) = words.split_first() else {
        return Err(usage(format!(
            "MEMBERS needs ADD or REMOVE: {MEMBERS_USAGE}"
        )));
    };
    let typed = action;
    let action = typed.to_ascii_uppercase();
    let (needed, form) = match action.as_str() {
        "ADD" => (3, "shard, node and peer_addr/client_addr"),
        "REMOVE" => (2, "shard and node"),
        _ => {
            return Err(bad(format!(
                "unknown MEMBERS action `{typed}`; use ADD or REMOVE: {MEMBERS_USAGE}"
            )))
        }
    };
    if rest.len() < needed {
        return Err(usage(format!(
            "MEMBERS {action} needs {form}: {MEMBERS_USAGE}"
        )));
    }
    if let Some(extra) = rest.get(needed) {
        return Err(usage(format!("unexpected `{extra}`; try HELP")));
    }
    let shard = rest[0].parse::<u16>().map_err(|_| {
        bad(format!(
            "shard must be a shard number from 0 to 65535, got `{}`",
            rest[0]
        ))
    })?;
    let node = rest[1].parse::<u64>().map_err(|_| {
        bad(format!(
            "node must be a node id (a whole number of 1 or more), got `{}`",
            rest[1]
        ))
    })?;
    let change = match action.as_str() {
        "ADD" => MemberChange::Add {
            node,
            address: rest[2].to_string(),
        },
        _ => MemberChange::Remove { node },
    };
    Ok(Members { shard, change })
}

fn key_only<'a>(
    words: &'a [&'a str],
    command: &str,
) -> Result<(Bytes, &'a [&'a str]), ProtocolError> {
    match words.split_first() {
        Some((key, rest)) => Ok((Bytes::copy_from_slice(key.as_bytes()), rest)),
        None => Err(ProtocolError::new(
            ErrorCode::KeyEmpty,
            format!("{command} needs a key: {command} key ..."),
        )),
    }
}

fn key_and_number<'a>(
    words: &'a [&'a str],
    command: &str,
    name: &str,
) -> Result<(Bytes, u64, &'a [&'a str]), ProtocolError> {
    let (key, rest) = key_only(words, command)?;
    let Some((number, rest)) = rest.split_first() else {
        return Err(usage(format!(
            "{command} needs {name}: {command} key {name} ..."
        )));
    };
    Ok((key, parse_number(number, name)?, rest))
}

fn parse_number(word: &str, name: &str) -> Result<u64, ProtocolError> {
    word.parse::<u64>().map_err(|_| {
        let code = if name == "wait_ms" {
            ErrorCode::WaitOutOfRange
        } else {
            ErrorCode::TtlOutOfRange
        };
        ProtocolError::new(
            code,
            format!("{name} must be a whole number of milliseconds, got `{word}`"),
        )
    })
}

#[derive(Default)]
struct Options {
    owner: Option<Bytes>,
    wait_ms: Option<u64>,
    token: Option<u64>,
    durability: Option<Durability>,
}

impl Options {
    fn parse(words: &[&str], allowed: &[&str], durability: bool) -> Result<Options, ProtocolError> {
        let mut options = Options::default();
        let mut words = words.iter();
        while let Some(word) = words.next() {
            let upper = word.to_ascii_uppercase();
            if durability {
                if let Some(value) = Durability::parse(word) {
                    options.durability = Some(value);
                    continue;
                }
            }
            if !allowed.contains(&upper.as_str()) {
                return Err(usage(format!("unexpected `{word}`; try HELP")));
            }
            let Some(value) = words.next() else {
                return Err(usage(format!("{upper} needs a value")));
            };
            match upper.as_str() {
                "OWNER" => options.owner = Some(Bytes::copy_from_slice(value.as_bytes())),
                "WAIT" => options.wait_ms = Some(parse_number(value, "wait_ms")?),
                "TOKEN" => {
                    options.token = Some(value.parse::<u64>().map_err(|_| {
                        usage(format!(
                            "TOKEN must be a fencing token (a whole number), got `{value}`"
                        ))
                    })?)
                }
                _ => unreachable!("option list and match disagree"),
            }
        }
        Ok(options)
    }
}

/// Formats the reply line (without terminator) for `response` to `request`.
pub fn format_response(request: &Request, response: &Response) -> String {
    let mut line = String::with_capacity(64);
    match response {
        Response::Acquired(acquired) => {
            let owner = match request {
                Request::Lock(lock) => &lock.owner[..],
                _ => &[],
            };
            let _ = write!(
                line,
                "ACQUIRED token={} owner={} ttl_ms={}",
                acquired.token,
                display_bytes(owner),
                acquired.ttl_ms
            );
            if acquired.reentered {
                line.push_str(" reentered=true");
            }
        }
        Response::Busy(holder) | Response::NotOwner(holder) => {
            let word = if matches!(response, Response::Busy(_)) {
                "BUSY"
            } else {
                "NOT_OWNER"
            };
            let _ = write!(
                line,
                "{word} owner={} token={} ttl_ms={}",
                display_bytes(&holder.owner),
                holder.token,
                holder.remaining_ms
            );
        }
        Response::Released(released) => {
            let _ = write!(line, "RELEASED token={}", released.token);
        }
        Response::Extended(extended) => {
            let _ = write!(
                line,
                "EXTENDED token={} ttl_ms={}",
                extended.token, extended.ttl_ms
            );
        }
        Response::LockInfo(info) => {
            let _ = write!(
                line,
                "HELD owner={} token={} ttl_ms={} waiters={} durability={}",
                display_bytes(&info.owner),
                info.token,
                info.remaining_ms,
                info.waiters,
                info.durability.name()
            );
        }
        Response::NotHeld(not_held) => {
            let _ = write!(line, "NOT_HELD last_token={}", not_held.last_token);
        }
        Response::Pong => line.push_str("PONG"),
        Response::Info(info) => {
            line.push_str("INFO");
            for (name, value) in &info.fields {
                let _ = write!(line, " {name}={value}");
            }
        }
        Response::HelloOk(hello) => {
            let _ = write!(
                line,
                "HELLO version={} server={}",
                hello.version, hello.server_name
            );
        }
        Response::Members(reply) => {
            let _ = write!(line, "MEMBERS shard={} voters=", reply.shard);
            for (index, voter) in reply.voters.iter().enumerate() {
                if index > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{voter}");
            }
        }
        Response::Error(error) => return format_error(error),
    }
    line
}

/// Formats an error reply line: `ERR CODE message`. Control characters in the message
/// (which may quote what the client typed) are shown as `?`, so the line stays one line.
pub fn format_error(error: &crate::ErrorReply) -> String {
    let message: String = error
        .message
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("ERR {} {}", error.code_name(), message)
}

/// Shows bytes as typed when they are UTF-8 without whitespace or control characters,
/// else as `0x` and hex, so a reply line always splits cleanly on spaces.
pub fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text.is_empty()
                && !text.starts_with("0x")
                && !text.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            text.to_string()
        }
        _ => {
            let mut hex = String::with_capacity(2 + bytes.len() * 2);
            hex.push_str("0x");
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::KEY_BYTES_MAX;

    fn parse(line: &str) -> Result<TextCommand, ProtocolError> {
        parse_line(line, &Bytes::from_static(b"conn-1"), Durability::Ephemeral)
    }

    fn request(line: &str) -> Request {
        match parse(line) {
            Ok(TextCommand::Request(request)) => request,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error_code(line: &str) -> ErrorCode {
        parse(line).expect_err(line).code
    }

    #[test]
    fn lock_with_defaults_and_with_every_option() {
        assert_eq!(
            request("LOCK backup-lock 60000"),
            Request::Lock(Lock {
                key: Bytes::from_static(b"backup-lock"),
                owner: Bytes::from_static(b"conn-1"),
                ttl_ms: 60000,
                wait_ms: 0,
                durability: Durability::Ephemeral,
                if_not_held: false,
            })
        );
        assert_eq!(
            request("lock job 500 owner w1 wait 2000 persistent"),
            Request::Lock(Lock {
                key: Bytes::from_static(b"job"),
                owner: Bytes::from_static(b"w1"),
                ttl_ms: 500,
                wait_ms: 2000,
                durability: Durability::Persistent,
                if_not_held: false,
            })
        );
    }

    #[test]
    fn every_command_word_parses_in_any_case() {
        assert!(matches!(request("unlock k"), Request::Unlock(_)));
        assert!(matches!(request("Extend k 10 OWNER o"), Request::Extend(e) if e.token.is_none()));
        assert!(matches!(request("unlock k token 42"), Request::Unlock(u) if u.token == Some(42)));
        assert!(matches!(request("GET k"), Request::Get(_)));
        assert_eq!(request("ping"), Request::Ping);
        assert_eq!(request("INFO"), Request::Info);
        assert_eq!(parse("help"), Ok(TextCommand::Help));
        assert_eq!(parse("QUIT"), Ok(TextCommand::Quit));
        assert_eq!(parse("   "), Ok(TextCommand::Empty));
    }

    #[test]
    fn members_add_and_remove_parse_in_any_case() {
        assert_eq!(
            request("MEMBERS ADD 1 4 127.0.0.1:7004/127.0.0.1:8004"),
            Request::Members(Members {
                shard: 1,
                change: MemberChange::Add {
                    node: 4,
                    address: "127.0.0.1:7004/127.0.0.1:8004".into(),
                },
            })
        );
        assert_eq!(
            request("members remove 0 3"),
            Request::Members(Members {
                shard: 0,
                change: MemberChange::Remove { node: 3 },
            })
        );
    }

    #[test]
    fn bad_members_lines_say_what_is_wrong() {
        let cases = [
            (
                "MEMBERS",
                ErrorCode::Malformed,
                "MEMBERS needs ADD or REMOVE",
            ),
            (
                "MEMBERS JOIN 0 4",
                ErrorCode::BadMembership,
                "unknown MEMBERS action `JOIN`",
            ),
            (
                "MEMBERS ADD 0 4",
                ErrorCode::Malformed,
                "MEMBERS ADD needs shard, node and",
            ),
            (
                "MEMBERS REMOVE 0",
                ErrorCode::Malformed,
                "MEMBERS REMOVE needs shard and node",
            ),
            (
                "MEMBERS REMOVE 0 3 now",
                ErrorCode::Malformed,
                "unexpected `now`",
            ),
            (
                "MEMBERS REMOVE x 3",
                ErrorCode::BadMembership,
                "shard must be a shard number",
            ),
            (
                "MEMBERS REMOVE 70000 3",
                ErrorCode::BadMembership,
                "got `70000`",
            ),
            (
                "MEMBERS REMOVE 0 -3",
                ErrorCode::BadMembership,
                "node must be a node id",
            ),
            (
                "MEMBERS REMOVE 0 0",
                ErrorCode::BadMembership,
                "node id 0 is reserved",
            ),
            (
                "MEMBERS ADD 0 4 127.0.0.1:7004",
                ErrorCode::BadMembership,
                "has no `/`",
            ),
        ];
        for (line, code, message) in cases {
            let error = parse(line).expect_err(line);
            assert_eq!(error.code, code, "{line}: {}", error.message);
            assert!(error.message.contains(message), "{line}: {}", error.message);
        }
    }

    #[test]
    fn bad_lines_get_a_code_that_names_the_problem() {
        assert_eq!(error_code("FROB x"), ErrorCode::UnknownCommand);
        assert_eq!(error_code("LOCK"), ErrorCode::KeyEmpty);
        assert_eq!(error_code("LOCK k"), ErrorCode::Malformed);
        assert_eq!(error_code("LOCK k soon"), ErrorCode::TtlOutOfRange);
        assert_eq!(error_code("LOCK k 0"), ErrorCode::TtlOutOfRange);
        assert_eq!(
            error_code("LOCK k 99999999999999"),
            ErrorCode::TtlOutOfRange
        );
        assert_eq!(
            error_code("LOCK k 10 WAIT forever"),
            ErrorCode::WaitOutOfRange
        );
        assert_eq!(
            error_code("LOCK k 10 WAIT 99999999999"),
            ErrorCode::WaitOutOfRange
        );
        assert_eq!(error_code("LOCK k 10 OWNER"), ErrorCode::Malformed);
        assert_eq!(error_code("LOCK k 10 COLOR red"), ErrorCode::Malformed);
        assert_eq!(error_code("UNLOCK k WAIT 5"), ErrorCode::Malformed);
        assert_eq!(error_code("PING now"), ErrorCode::Malformed);
        assert_eq!(error_code("UNLOCK k TOKEN 0"), ErrorCode::Malformed);
        assert_eq!(error_code("UNLOCK k TOKEN soon"), ErrorCode::Malformed);
        let long_key = "k".repeat(KEY_BYTES_MAX + 1);
        assert_eq!(
            error_code(&format!("GET {long_key}")),
            ErrorCode::KeyTooLong
        );
    }

    #[test]
    fn replies_are_one_line_of_name_value_pairs() {
        let lock = request("LOCK k 100");
        let acquired = Response::Acquired(crate::Acquired {
            token: 7,
            ttl_ms: 100,
            reentered: false,
        });
        assert_eq!(
            format_response(&lock, &acquired),
            "ACQUIRED token=7 owner=conn-1 ttl_ms=100"
        );
        let busy = Response::Busy(crate::Busy {
            token: 3,
            remaining_ms: 50,
            owner: Bytes::from_static(b"two words"),
        });
        assert_eq!(
            format_response(&lock, &busy),
            "BUSY owner=0x74776f20776f726473 token=3 ttl_ms=50"
        );
        let error = Response::from(ProtocolError::new(ErrorCode::KeyEmpty, "key is empty"));
        assert_eq!(format_response(&lock, &error), "ERR KEY_EMPTY key is empty");
        let typed = Response::from(ProtocolError::new(
            ErrorCode::UnknownCommand,
            "unknown `a\x1bb\rc`",
        ));
        assert_eq!(
            format_response(&lock, &typed),
            "ERR UNKNOWN_COMMAND unknown `a?b?c`"
        );
    }

    #[test]
    fn a_members_reply_lists_the_voters() {
        let remove = request("MEMBERS REMOVE 2 3");
        let reply = Response::Members(crate::MembersReply {
            shard: 2,
            voters: vec![1, 2, 4],
        });
        assert_eq!(
            format_response(&remove, &reply),
            "MEMBERS shard=2 voters=1,2,4"
        );
        let pending = Response::from(ProtocolError::new(
            ErrorCode::MembershipChangePending,
            "shard 2 has an uncommitted membership change; retry shortly",
        ));
        assert_eq!(
            format_response(&remove, &pending),
            "ERR MEMBERSHIP_CHANGE_PENDING shard 2 has an uncommitted membership change; retry \
             shortly"
        );
    }
}
