//! `cascadia demo`, the README's first command: it starts, routes the
//! canary split, runs the cascade and the shadow, walks through a drill and
//! a rolled-back canary, and stops cleanly, leaving no files behind.

use crate::support::{DemoProcess, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_samples_and_stops_on_sigterm() {
    let demo = DemoProcess::start().await;
    let output = &demo.output;
    let text = output.join("\n");
    // The split: about 10% canary, every sample answered.
    let count = |prefix: &str| -> u32 {
        output
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
    };
    let (canary, stable) = (count("canary"), count("stable"));
    assert_eq!(canary + stable, 1000, "{text}");
    assert!((50..=150).contains(&canary), "{text}");
    // The cascade answered some rows itself and escalated others.
    let stage = |prefix: &str| -> u32 {
        output
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
    };
    assert_eq!(stage("local") + stage("escalated"), 1000, "{text}");
    assert!(stage("local") > 0 && stage("escalated") > 0, "{text}");
    assert!(
        text.contains("class agreement 100.0%"),
        "the shadow compared identical models:\n{text}"
    );

    // The walkthrough: a drill that failed over and back, and a rollout
    // the gateway rolled back by itself, neither failing a request.
    assert!(text.contains("Failover drill:"), "{text}");
    assert!(text.contains("failed over to eu-west in "), "{text}");
    assert!(!text.contains("failover drill failed"), "{text}");
    assert!(text.contains("rolled_back at weight 0: p95"), "{text}");
    let failures: Vec<&str> = output
        .iter()
        .filter(|l| l.contains("requests answered"))
        .map(|l| l.as_str())
        .collect();
    assert_eq!(failures.len(), 2, "{text}");
    assert!(failures.iter().all(|l| l.contains(", 0 failed")), "{text}");
    let folder = demo
        .after("config   ")
        .and_then(|l| l.split_whitespace().next())
        .map(|path| {
            std::path::PathBuf::from(path)
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .unwrap_or_else(|| panic!("no config line in:\n{text}"));
    assert!(folder.exists());

    let mut child = demo.child;
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the demo stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !folder.exists(),
        "the demo's folder is removed: {}",
        folder.display()
    );
}
