//! The binary's contract with scripts: one "listening on" line on stdout, then serve.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

/// Kills the simulator even when an assertion fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prints_listening_line_and_serves() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_cascadia-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--model",
                "fraud",
                "--model-version",
                "1",
            ])
            .args(["--region", "us-east", "--latency-ms", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("cascadia-sim listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let addr: SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);

    // A raw HTTP/1.1 request keeps this test free of client setup.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("x-sim-region: us-east"), "{resp}");
    assert!(resp.contains(&format!("x-sim-name: {addr}")), "{resp}");
}

#[test]
fn version_prints_the_programs_version_and_help_lists_the_endpoints() {
    let version = Command::new(env!("CARGO_BIN_EXE_cascadia-sim"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("cascadia-sim {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(env!("CARGO_BIN_EXE_cascadia-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for endpoint in [
        "/features/{key}",
        "/sim/control",
        "/sim/stats",
        "--model-version",
    ] {
        assert!(
            help.contains(endpoint),
            "{endpoint} missing from --help:\n{help}"
        );
    }
}
