//! A minimal pingora HTTP/1.1 reverse proxy: the "what a bare Rust proxy costs" baseline
//! that `loadtests/scripts/peers.sh` measures beside Cascadia, nginx and HAProxy.
//!
//! ```text
//! pingora-baseline LISTEN_ADDR UPSTREAM_ADDR      e.g. 127.0.0.1:18080 127.0.0.1:9000
//! ```
//!
//! One service, one listener, one upstream, no TLS, `threads: 1`, upstream keep-alive from
//! pingora's connection pool (its default). Nothing is filtered or rewritten: every request
//! goes to `UPSTREAM_ADDR` as it came. pingora binds inside its own runtime and cannot
//! report a port chosen by the kernel, so the caller passes a free port; the first stdout
//! line is `pingora-baseline listening on http://ADDR`, printed just before the server
//! starts (the caller should still poll until the port accepts connections).
//!
//! SIGINT or SIGTERM end it within about a second: the grace periods are set to 0 because
//! a benchmark has no in-flight work worth draining.

use std::io::Write;
use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The proxy: every request goes to the one upstream.
struct Baseline {
    /// Built once: `HttpPeer::new` resolves its address, which is not per-request work.
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    // pingora reports failed requests through `log`; errors go to stderr unless RUST_LOG
    // says otherwise (a benchmark must not hide errors).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: pingora-baseline LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    }
    let parse = |what: &str, s: &str| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("pingora-baseline: bad {what} address {s:?}: {e}");
            std::process::exit(2)
        })
    };
    let listen = parse("listen", &args[1]);
    let upstream = parse("upstream", &args[2]);

    let conf = ServerConf {
        // The benchmark pins every peer to one worker.
        threads: 1,
        // No draining on SIGTERM (the default grace period is 5 minutes).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let peer = HttpPeer::new(upstream, false, String::new());
    let mut proxy = http_proxy_service(&server.configuration, Baseline { peer });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);

    println!("pingora-baseline listening on http://{listen}");
    std::io::stdout().flush().ok();
    server.run_forever();
}
