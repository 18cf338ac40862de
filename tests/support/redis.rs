//! A real `redis-server` for tests: started on a free port, and killed,
//! paused (SIGSTOP), resumed and restarted on demand.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;

/// A running redis-server. Killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Serving TLS only (`rediss://`), with a test CA in `dir`.
    tls: bool,
    /// A node of a Redis Cluster.
    cluster: bool,
    /// More `redis-server` arguments (`--replicaof`, say).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits for it to accept connections.
    pub async fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            child: None,
            port,
            dir,
            tls: false,
            cluster: false,
            extra: Vec::new(),
        };
        server.spawn().await;
        server
    }

    /// A server that speaks TLS only, with a certificate for 127.0.0.1
    /// from a CA made for the test ([`Self::ca_pem`]).
    pub async fn start_tls() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let output = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl is installed");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=cascadia test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.path().join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let mut server = Self {
            child: None,
            port,
            dir,
            tls: true,
            cluster: false,
            extra: Vec::new(),
        };
        server.spawn().await;
        server
    }

    /// The test CA's certificate (PEM), for a TLS server.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).unwrap()
    }

    async fn spawn(&mut self) {
        let (plain_port, tls_args) = if self.tls {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            (
                "0".to_owned(),
                vec![
                    "--tls-port".to_owned(),
                    self.port.to_string(),
                    "--tls-cert-file".to_owned(),
                    file("server.crt"),
                    "--tls-key-file".to_owned(),
                    file("server.key"),
                    "--tls-ca-cert-file".to_owned(),
                    file("ca.crt"),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ],
            )
        } else {
            (self.port.to_string(), Vec::new())
        };
        let cluster_args: Vec<&str> = if self.cluster {
            vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ]
        } else {
            Vec::new()
        };
        let mut child = Command::new("redis-server")
            .args(["--port", &plain_port])
            .args(&tls_args)
            .args(&cluster_args)
            .args(&self.extra)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (see .ci/run)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        })
        .await
        .expect("redis-server became ready");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("running")
            .to_string();
        assert!(std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts again on the same port after [`Self::kill`].
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// `kill -STOP`: hung, connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Runs a `redis-cli` command and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = std::process::Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if self.tls {
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(self.dir.path().join("ca.crt"));
        }
        let output = command.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// A real Redis Cluster of three masters (no replicas) on free ports,
/// created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = cluster_port();
            let mut node = RedisServer {
                child: None,
                port,
                dir: tempfile::tempdir().unwrap(),
                tls: false,
                cluster: true,
                extra: Vec::new(),
            };
            node.spawn().await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        // Ready once every node agrees the cluster is whole.
        tokio::time::timeout(WAIT, async {
            loop {
                if nodes
                    .iter()
                    .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the cluster became ready");
        Self { nodes }
    }

    /// The seed nodes, as `cluster_nodes` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis-cli -c` against the cluster (follows redirects).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &self.nodes[0].port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose cluster bus port (10000 higher) is free and valid too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Redis Sentinel on free ports: one master, one replica of it, and three
/// sentinels watching the master as `mymaster` (quorum 2, down after
/// 500 ms).
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child, tempfile::TempDir)>,
}

impl RedisSentinel {
    pub const MASTER: &'static str = "mymaster";

    pub async fn start() -> Self {
        let master = RedisServer::start().await;
        let port = free_port();
        let mut replica = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            tls: false,
            cluster: false,
            extra: vec![
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master.port.to_string(),
            ],
        };
        replica.spawn().await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {} 500\nsentinel failover-timeout {} 3000\n",
                    dir.path().display(),
                    Self::MASTER,
                    master.port,
                    Self::MASTER,
                    Self::MASTER,
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server --sentinel");
            sentinels.push((port, child, dir));
        }
        let set = Self {
            master,
            replica,
            sentinels,
        };
        // Ready once every sentinel knows the replica and the two others,
        // so a failover can be agreed on.
        tokio::time::timeout(WAIT, async {
            loop {
                let ready = set.sentinels.iter().all(|(port, _, _)| {
                    let replicas = sentinel_cli(*port, &["SENTINEL", "REPLICAS", Self::MASTER]);
                    let others = sentinel_cli(*port, &["SENTINEL", "SENTINELS", Self::MASTER]);
                    replicas.contains(&set.replica.port.to_string())
                        && others.matches("runid").count() >= 2
                });
                if ready {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the sentinels became ready");
        set
    }

    /// The sentinels, as `sentinel_nodes` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The port the sentinels name as the master now.
    pub fn master_port(&self) -> Option<u16> {
        let (port, _, _) = &self.sentinels[0];
        let reply = sentinel_cli(
            *port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER],
        );
        reply.lines().nth(1)?.trim().parse().ok()
    }
}

fn sentinel_cli(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
