//! `--cluster-status`: one node's view of its shards' Raft groups, read from INFO.
//!
//! A cluster node's INFO has, besides `shards`, six entries per shard `N`:
//! `shardN_is_leader` (1 when this node leads the shard), `shardN_leader` (the leader's node
//! id, 0 when no leader is known), `shardN_term`, `shardN_commit_index`,
//! `shardN_applied_index` and `shardN_last_index`. An entry a server does not send (an
//! older server) is shown as `-` in the table and `null` in JSON.
//!
//! ```text
//! node 127.0.0.1:8002 (kahu/0.1.0), 2 shards
//! shard  is_leader  leader  term  commit_index  applied_index  last_index
//! 0      yes        1       3     120           120            121
//! 1      no         2       3     98            98             98
//! ```
//!
//! ```json
//! {"node":"127.0.0.1:8002","server":"kahu/0.1.0","shardCount":2,"shards":[{"shard":0,
//!  "isLeader":true,"leader":1,"term":3,"commitIndex":120,"appliedIndex":120,"lastIndex":121},
//!  ...]}
//! ```

use std::collections::HashMap;

use kahu_client::{HelloOk, InfoReply};
use serde::Serialize;

/// The most shard rows shown: the protocol's shard count is a u16.
const SHARDS_SHOWN_MAX: u64 = u16::MAX as u64;

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The address of the node that answered.
    pub node: String,
    pub server: String,
    pub shard_count: u64,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    pub shard: u64,
    pub is_leader: Option<bool>,
    /// `None` when no leader is known (INFO says 0) or the entry is missing.
    pub leader: Option<u64>,
    pub term: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_index: Option<u64>,
}

impl ClusterStatus {
    /// Reads the per-shard entries of `info`, for the shard count it announces (`shards`),
    /// else the one from HELLO.
    pub fn from_info(node: &str, hello: &HelloOk, info: &InfoReply) -> ClusterStatus {
        let fields: HashMap<&str, u64> = info
            .fields
            .iter()
            .map(|(name, value)| (name.as_str(), *value))
            .collect();
        let shard_count = fields
            .get("shards")
            .copied()
            .unwrap_or(u64::from(hello.shard_count))
            .min(SHARDS_SHOWN_MAX);
        let shards = (0..shard_count)
            .map(|shard| {
                let field =
                    |name: &str| fields.get(format!("shard{shard}_{name}").as_str()).copied();
                ShardStatus {
                    shard,
                    is_leader: field("is_leader").map(|value| value != 0),
                    leader: field("leader").filter(|&leader| leader != 0),
                    term: field("term"),
                    commit_index: field("commit_index"),
                    applied_index: field("applied_index"),
                    last_index: field("last_index"),
                }
            })
            .collect();
        ClusterStatus {
            node: node.to_string(),
            server: hello.server_name.clone(),
            shard_count,
            shards,
        }
    }

    /// The text form: a title line, a header and one row per shard, columns aligned.
    pub fn table(&self) -> String {
        let header = [
            "shard",
            "is_leader",
            "leader",
            "term",
            "commit_index",
            "applied_index",
            "last_index",
        ];
        let rows: Vec<[String; 7]> = self.shards.iter().map(ShardStatus::cells).collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|column| {
                rows.iter()
                    .map(|row| row[column].len())
                    .chain([header[column].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[&str]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut lines = vec![
            format!(
                "node {} ({}), {} shard{}",
                self.node,
                self.server,
                self.shard_count,
                if self.shard_count == 1 { "" } else { "s" }
            ),
            line(&header),
        ];
        for row in &rows {
            lines.push(line(&row.each_ref().map(String::as_str)));
        }
        lines.join("\n")
    }
}

impl ShardStatus {
    fn cells(&self) -> [String; 7] {
        let number = |value: Option<u64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
        [
            self.shard.to_string(),
            match self.is_leader {
                Some(true) => "yes".to_string(),
                Some(false) => "no".to_string(),
                None => "-".to_string(),
            },
            match (self.leader, self.is_leader) {
                (Some(leader), _) => leader.to_string(),
                (None, Some(_)) => "none".to_string(),
                (None, None) => "-".to_string(),
            },
            number(self.term),
            number(self.commit_index),
            number(self.applied_index),
            number(self.last_index),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(shard_count: u16) -> HelloOk {
        HelloOk {
            version: 1,
            server_name: "kahu/0.1.0".into(),
            shard_count,
            frame_bytes_max: 16384,
            key_bytes_max: 512,
            owner_bytes_max: 256,
            ttl_ms_max: 1,
            wait_ms_max: 1,
        }
    }

    fn info(fields: &[(&str, u64)]) -> InfoReply {
        InfoReply {
            fields: fields
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect(),
        }
    }

    #[test]
    fn shards_are_read_from_their_info_entries() {
        let info = info(&[
            ("uptime_ms", 5),
            ("shards", 2),
            ("shard0_is_leader", 1),
            ("shard0_leader", 1),
            ("shard0_term", 3),
            ("shard0_commit_index", 120),
            ("shard0_applied_index", 120),
            ("shard0_last_index", 121),
            ("shard1_is_leader", 0),
            ("shard1_leader", 0),
            ("shard1_term", 4),
            ("shard1_commit_index", 98),
            ("shard1_applied_index", 97),
            ("shard1_last_index", 98),
        ]);
        let status = ClusterStatus::from_info("127.0.0.1:8002", &hello(2), &info);
        assert_eq!(status.shard_count, 2);
        assert_eq!(
            status.shards[1],
            ShardStatus {
                shard: 1,
                is_leader: Some(false),
                leader: None,
                term: Some(4),
                commit_index: Some(98),
                applied_index: Some(97),
                last_index: Some(98),
            }
        );
        assert_eq!(
            status.table(),
            "node 127.0.0.1:8002 (kahu/0.1.0), 2 shards\n\
             shard  is_leader  leader  term  commit_index  applied_index  last_index\n\
             0      yes        1       3     120           120            121\n\
             1      no         none    4     98            97             98"
        );
    }

    #[test]
    fn missing_entries_show_as_unknown() {
        let status = ClusterStatus::from_info("a:1", &hello(1), &info(&[("uptime_ms", 5)]));
        assert_eq!(
            status.shard_count, 1,
            "from HELLO when INFO has no `shards`"
        );
        assert_eq!(status.shards[0].is_leader, None);
        assert!(status
            .table()
            .ends_with("\n0      -          -       -     -             -              -"));
        let json = serde_json::to_string(&status).unwrap();
        assert!(
            json.contains(r#""isLeader":null,"leader":null,"term":null"#),
            "{json}"
        );
    }
}
