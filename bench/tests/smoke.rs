//! kahu-bench runs for a fraction of a second against a test server and prints one JSON
//! object with the documented fields. (A smoke test only: speed belongs in benchmark runs.)

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_prints_parseable_json() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = kahu_server::Server::start(kahu_server::Config::for_tests(data_dir.path()))
        .await
        .expect("server");
    let address = server.local_addr().to_string();
    for durability in ["persistent", "ephemeral"] {
        let address = address.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_kahu-bench"))
                .args(["--connection-source", &address, "--connections", "2"])
                .args(["--duration", "0.3", "--warmup", "0.1", "--json"])
                .args(["--durability", durability])
                .output()
                .expect("run kahu-bench")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("one JSON object");
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
            assert!(report.get(field).is_some(), "{field} missing in {report}");
        }
        assert_eq!(report["durability"], durability);
        assert_eq!(report["errors"], 0);
        assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    }
    server.shutdown().await;
}
