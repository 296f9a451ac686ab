//! Every protocol limit, named with its qualifier last. A value past a limit is refused with
//! a clear error naming the limit; nothing is truncated silently. The server announces these
//! in its HELLO reply so a client can check before sending.

/// Largest frame, header included, in either direction. Checked before any allocation.
pub const FRAME_BYTES_MAX: usize = 16 * 1024;

/// Longest lock key. Keys are opaque bytes (UTF-8 in the text mode), never empty.
pub const KEY_BYTES_MAX: usize = 512;

/// Longest owner. Owners are opaque bytes, never empty.
pub const OWNER_BYTES_MAX: usize = 256;

/// Shortest lease. A lease of zero would expire before it could be used.
pub const TTL_MS_MIN: u64 = 1;

/// Longest lease: seven days. Longer leases are almost always a unit mistake (seconds
/// passed as milliseconds do not reach this; microseconds do), and a holder that needs
/// longer should extend.
pub const TTL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;

/// Longest server-side wait for a lock: one hour. Zero means "do not wait".
pub const WAIT_MS_MAX: u64 = 60 * 60 * 1000;

/// Longest client name in HELLO.
pub const CLIENT_NAME_BYTES_MAX: usize = 256;

/// Longest error message a server sends; longer ones are cut at a character boundary.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Longest line in the text mode, terminator included.
pub const TEXT_LINE_BYTES_MAX: usize = 2048;

/// Longest node address in MEMBERS (`PEER_ADDR/CLIENT_ADDR`). A numeric IPv6 peer address
/// and a long host name fit; anything longer is a mistake.
pub const NODE_ADDRESS_BYTES_MAX: usize = 255;

/// Most voters in one shard's Raft group, as in the server's write-ahead log: the count in a
/// MEMBERS_REPLY.
pub const VOTERS_MAX: usize = 255;
