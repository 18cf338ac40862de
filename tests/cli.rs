//! The command line's edges: enumerated values, helpful refusals, exit
//! codes, and a version that names its commit.

use std::process::Command;

use crate::support::{sim, single_backend_config, GatewayProcess};

/// Runs `cascadia ARGS`; (exit code, stdout, stderr).
async fn cascadia(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cascadia"))
            .args(&args)
            .output()
            .expect("run cascadia")
    })
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_version_names_the_commit() {
    let (code, stdout, _) = cascadia(&["--version"]).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with(&format!("cascadia {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(!stdout.contains("(commit )"), "{stdout}");
}

#[tokio::test]
async fn unknown_faults_and_actions_are_refused_with_the_allowed_values() {
    let (code, _, stderr) = cascadia(&["drill", "--fault", "nonsense"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'nonsense' for '--fault"),
        "{stderr}"
    );
    for value in ["blackhole", "latency", "errors", "redis"] {
        assert!(stderr.contains(value), "{value} not offered: {stderr}");
    }
    let (code, _, stderr) = cascadia(&["rollout", "restart"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    for value in ["status", "pause", "resume", "promote", "abort"] {
        assert!(stderr.contains(value), "{value} not offered: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_admin_says_how_to_pass_the_token_and_unknown_routes_fail() {
    let model = sim("fraud", "1", "us-east").await;
    let token = "a-long-enough-admin-token-0123456789";
    let config = single_backend_config("fraud", model.addr, "").replacen(
        "[[backends]]",
        "[gateway.admin]\ntoken_file = \"admin.token\"\n\n[[backends]]",
        1,
    );
    let gateway = GatewayProcess::start_with_files(&config, &[("admin.token", token)]).await;
    let admin = format!("http://{}", gateway.admin);
    let (code, _, stderr) = cascadia(&["rollout", "status", "--admin", &admin]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("--token-file"), "a hint: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let token_file = token_file.to_str().unwrap();
    let (code, _, stderr) = cascadia(&[
        "rollout",
        "status",
        "--route",
        "nosuch",
        "--admin",
        &admin,
        "--token-file",
        token_file,
    ])
    .await;
    assert_eq!(
        code,
        Some(1),
        "a route without a rollout is an error: {stderr}"
    );
    assert!(stderr.contains("\"nosuch\" has no rollout"), "{stderr}");
    let (code, stdout, stderr) = cascadia(&[
        "rollout",
        "status",
        "--admin",
        &admin,
        "--token-file",
        token_file,
    ])
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"rollouts\""), "{stdout}");
}
