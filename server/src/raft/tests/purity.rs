//! The core must stay pure: no I/O, threads, clocks or async runtime, so that the
//! simulator can run it deterministically. This test reads the module's sources and fails
//! if any of them names such an API.

const SOURCES: &[(&str, &str)] = &[
    ("config.rs", include_str!("../config.rs")),
    ("election.rs", include_str!("../election.rs")),
    ("log.rs", include_str!("../log.rs")),
    ("message.rs", include_str!("../message.rs")),
    ("mod.rs", include_str!("../mod.rs")),
    ("node.rs", include_str!("../node.rs")),
    ("progress.rs", include_str!("../progress.rs")),
    ("ready.rs", include_str!("../ready.rs")),
    ("replication.rs", include_str!("../replication.rs")),
];

const FORBIDDEN: &[&str] = &[
    "tokio",
    "mio",
    "crossbeam",
    "std::net",
    "std::fs",
    "std::io",
    "std::thread",
    "std::time",
    "Instant",
    "SystemTime",
    "std::process",
    "std::env",
    "rand::",
    "Mutex",
    "RwLock",
    "crate::",
];

#[test]
fn the_raft_core_imports_no_io_threads_or_clocks() {
    for (file, source) in SOURCES {
        // Doc comments may mention what the module avoids.
        let code: String = source
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for name in FORBIDDEN {
            assert!(!code.contains(name), "raft/{file} uses {name}");
        }
    }
}

#[test]
fn every_source_file_of_the_core_is_checked() {
    let listed: Vec<&str> = SOURCES.iter().map(|(file, _)| *file).collect();
    let module = include_str!("../mod.rs");
    for line in module.lines() {
        if let Some(name) = line.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            if name != "tests" {
                let file = format!("{name}.rs");
                assert!(listed.contains(&file.as_str()), "{file} is not checked");
            }
        }
    }
}
