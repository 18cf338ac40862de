//! `cascadia check`: every problem with its field path, exit codes.

use std::process::Command;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    check_path(&path)
}

fn check_path(path: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cascadia"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run cascadia check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_problem_with_its_field_path() {
    let config = r#"
[[backends]]
name = "a"
region = "us-east"
endpoints = ["127.0.0.1:9000"]

[[routes]]
name = "first"
match = { model = "first" }
backends = ["a"]

[[routes]]
name = "second"
match = { model = "second" }

[[routes.split]]
version = "stable"
weight = 80
backends = ["a"]

[[routes.split]]
version = "canary"
weight = 10
backends = ["missing"]
"#;
    let (ok, _, stderr) = check(config);
    assert!(!ok, "invalid config must exit 1");
    assert!(
        stderr.contains("routes[1].split: weights sum to 90, must sum to 100"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"routes[1].split[1].backends[0]: unknown backend "missing""#),
        "{stderr}"
    );
}

#[test]
fn check_names_unknown_fields() {
    let (ok, _, stderr) = check("[gateway]\nlisten = \"127.0.0.1:0\"\nlistne = 1\n");
    assert!(!ok);
    assert!(stderr.contains("gateway.listne"), "{stderr}");
}

#[test]
fn every_example_config_is_valid_and_summarised() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, stdout, stderr) = check_path(&path);
            assert!(ok, "{}: {stderr}", path.display());
            assert!(
                stdout.contains("fraud") || stdout.contains("route"),
                "summary for {}: {stdout}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[test]
fn an_unreadable_admin_token_is_a_config_error() {
    let (ok, _, stderr) =
        check(
        "[gateway]\nallow_no_routes = true\n[gateway.admin]\ntoken_env = \"CASCADIA_TEST_TOKEN_THAT_IS_NOT_SET\"\n",
    );
    assert!(!ok);
    assert!(stderr.contains("gateway.admin.token_env: environment variable CASCADIA_TEST_TOKEN_THAT_IS_NOT_SET is not set"), "{stderr}");
}

#[test]
fn what_check_refuses_run_refuses_the_same_way_without_a_panic() {
    // An https:// OTLP endpoint once passed `check` and then made `run`
    // panic (exit 101). It is served now; its CA file is what is wrong here.
    let config = r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.tracing]
otlp_endpoint = "https://collector.example:4317"
tls_ca_file = "no-such-ca.pem"

[[backends]]
name = "a"
region = "us-east"
endpoints = ["127.0.0.1:9000"]

[[routes]]
name = "r"
match = { model = "m" }
backends = ["a"]
"#;
    let (ok, _, stderr) = check(config);
    assert!(!ok);
    assert!(stderr.contains("gateway.tracing.tls_ca_file"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_cascadia"))
        .args(["run", "--no-watch", "--config"])
        .arg(&path)
        .output()
        .expect("run cascadia run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(1),
        "a clean refusal, not a panic: {stderr}"
    );
    assert!(stderr.contains("gateway.tracing.tls_ca_file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn tls_files_that_cannot_serve_are_refused_with_their_field() {
    let ca = crate::support::tls::TestCa::new("check ca");
    let one = ca.issue(&["localhost"]);
    let other = ca.issue(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.crt"), &one.cert_pem).unwrap();
    // Another certificate's key: a pair that does not belong together.
    std::fs::write(dir.path().join("server.key"), &other.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.pem).unwrap();
    std::fs::write(dir.path().join("client.key"), "not a key").unwrap();
    let route = "\n[[routes]]\nname = \"r\"\nmatch = { model = \"m\" }\nbackends = [\"a\"]\n";
    let listener = format!(
        "[gateway.tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n\n[[backends]]\nname = \"a\"\nregion = \"r\"\nendpoints = [\"127.0.0.1:9000\"]\n{route}"
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &listener).unwrap();
    let (ok, _, stderr) = check_path(&path);
    assert!(!ok);
    assert!(stderr.contains("gateway.tls.key_file"), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");

    let upstream = format!(
        "[[backends]]\nname = \"a\"\nregion = \"r\"\nendpoints = [\"127.0.0.1:9000\"]\ntls = {{ ca_file = \"ca.crt\", cert_file = \"server.crt\", key_file = \"client.key\" }}\n{route}"
    );
    std::fs::write(&path, &upstream).unwrap();
    let (ok, _, stderr) = check_path(&path);
    assert!(!ok);
    assert!(stderr.contains("backends[0].tls.key_file"), "{stderr}");
    assert!(
        !stderr.contains("not a key"),
        "a key file's text is never shown: {stderr}"
    );

    // A good pair: accepted, and the summary says what was read.
    std::fs::write(dir.path().join("server.key"), &one.key_pem).unwrap();
    std::fs::write(
        &path,
        listener.replace(
            "[gateway.tls]",
            "[gateway.tls]\nclient_ca_file = \"ca.crt\"",
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check_path(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tls: "), "{stdout}");
    assert!(stdout.contains("client certificates required"), "{stdout}");
}

#[test]
fn the_published_json_schema_is_the_one_check_prints_and_is_closed() {
    let output = Command::new(env!("CARGO_BIN_EXE_cascadia"))
        .args(["check", "--schema"])
        .output()
        .expect("run cascadia check --schema");
    assert!(output.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let published: serde_json::Value =
        serde_json::from_str(include_str!("../config/cascadia.schema.json")).unwrap();
    assert_eq!(
        printed, published,
        "config/cascadia.schema.json is stale: regenerate it with `cascadia check --schema > config/cascadia.schema.json`"
    );
    assert_eq!(
        printed["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    // Every table refuses unknown keys, as the parser does.
    for (name, def) in printed["$defs"].as_object().unwrap() {
        if def["type"] == "object" {
            assert_eq!(def["additionalProperties"], false, "{name} is open");
        }
    }
    // New settings are in it.
    let gateway = &printed["$defs"]["Gateway"]["properties"];
    for key in ["tls", "access_log", "redis", "drain_delay"] {
        assert!(gateway.get(key).is_some(), "gateway.{key} missing");
    }
    let backend = &printed["$defs"]["Backend"]["properties"];
    for key in ["dns", "resolve_interval", "tls", "endpoints"] {
        assert!(backend.get(key).is_some(), "backends.{key} missing");
    }
}
