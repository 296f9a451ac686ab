//! kahu-bench runs each workload and mode for a fraction of a second against a test
//! server and prints one JSON object with the documented fields. (A smoke test only:
//! speed belongs in benchmark runs.)

use std::process::Command;

fn run(address: &str, arguments: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_kahu-bench"))
        .args([
            "--connection-source",
            address,
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--json",
        ])
        .args(arguments)
        .output()
        .expect("run kahu-bench");
    assert!(
        output.status.success(),
        "{arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{arguments:?}: not one JSON object ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_and_mode_prints_parseable_json() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = kahu_server::Server::start(kahu_server::Config::for_tests(data_dir.path()))
        .await
        .expect("server");
    let address = server.local_addr().to_string();
    let runs: Vec<Vec<&str>> = vec![
        vec!["--connections", "2"],
        vec!["--durability", "ephemeral", "--pipeline", "8"],
        vec!["--target", "echo", "--pipeline", "4"],
        vec![
            "--workload",
            "contended",
            "--connections",
            "3",
            "--durability",
            "ephemeral",
        ],
        vec![
            "--workload",
            "scheduler",
            "--connections",
            "2",
            "--work-us",
            "50",
        ],
        vec!["--workload", "get", "--durability", "ephemeral"],
        vec![
            "--rate",
            "500",
            "--connections",
            "2",
            "--pipeline",
            "4",
            "--durability",
            "ephemeral",
        ],
    ];
    for arguments in runs {
        let address = address.clone();
        let owned: Vec<String> = arguments
            .iter()
            .map(|argument| argument.to_string())
            .collect();
        let report = tokio::task::spawn_blocking(move || {
            let arguments: Vec<&str> = owned.iter().map(String::as_str).collect();
            run(&address, &arguments)
        })
        .await
        .unwrap();
        for field in [
            "workload",
            "mode",
            "ops",
            "errors",
            "ops_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
        ] {
            assert!(
                report.get(field).is_some(),
                "{arguments:?}: {field} missing in {report}"
            );
        }
        assert_eq!(report["errors"], 0, "{arguments:?}: {report}");
        assert!(
            report["ops"].as_u64().unwrap() > 0,
            "{arguments:?}: {report}"
        );
        if arguments.contains(&"contended") {
            assert!(report.get("handoff_p50_us").is_some(), "{report}");
        }
        if arguments.contains(&"scheduler") {
            assert!(report["jobs_per_sec"].as_u64().unwrap() > 0, "{report}");
        }
        if arguments.contains(&"--rate") {
            assert_eq!(report["mode"], "open");
            assert!(report.get("achieved_per_sec").is_some(), "{report}");
        }
    }
    let held = tokio::task::spawn_blocking(move || {
        run(&address, &["--workload", "hold", "--locks", "3000"])
    })
    .await
    .unwrap();
    assert_eq!(held["locks"], 3000, "{held}");
    assert_eq!(held["refused"], 0, "{held}");
    assert!(
        held["rss_after_bytes"].as_u64().unwrap() > 0,
        "the server reports its memory: {held}"
    );
    server.shutdown().await;
}

/// The failover workload starts its own 3-node cluster of `kahu-server` processes, kills a
/// shard leader and waits for a grant from the survivors: one round here.
#[test]
fn failover_runs_one_round_against_its_own_cluster() {
    let server =
        std::path::Path::new(env!("CARGO_BIN_EXE_kahu-bench")).with_file_name("kahu-server");
    if !server.exists() {
        // `cargo test -p kahu-bench` alone does not build the server binary.
        eprintln!("skipped: {} is not built", server.display());
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_kahu-bench"))
        .args([
            "--workload",
            "failover",
            "--kills",
            "1",
            "--json",
            "--server-bin",
        ])
        .arg(&server)
        .output()
        .expect("run kahu-bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(result["workload"], "failover");
    assert!(result["p50_ms"].as_f64().unwrap() > 0.0);
}
