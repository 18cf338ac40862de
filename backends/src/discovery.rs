//! Endpoints from DNS: the seam through which a backend's `dns` name is
//! resolved ([`Resolver`]; the system's resolver in production, a scripted
//! one in tests), and the rule for what a new answer changes.
//!
//! A name that fails to resolve, or resolves to nothing, keeps the last
//! addresses it had: a DNS outage must not empty a working pool. (The
//! endpoints' own health still decides whether they take traffic.)

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// A resolution in flight.
pub type Resolution<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a host and port to addresses.
pub trait Resolver: Send + Sync + 'static {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolution<'a>;
}

/// The system's resolver (`getaddrinfo`, so `/etc/hosts` and the
/// cluster's DNS both apply).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolution<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// The addresses to use after an answer: the answer's, sorted and without
/// duplicates, or `None` to keep what there is (a failure or an empty
/// answer).
pub fn next_addresses(answer: io::Result<Vec<SocketAddr>>) -> Option<Vec<SocketAddr>> {
    let addresses: BTreeSet<SocketAddr> = answer.ok()?.into_iter().collect();
    if addresses.is_empty() {
        return None;
    }
    Some(addresses.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_empty_answers_keep_the_last_addresses() {
        let a: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(next_addresses(Ok(vec![a, b, a])), Some(vec![b, a]));
        assert_eq!(next_addresses(Ok(Vec::new())), None);
        assert_eq!(next_addresses(Err(io::ErrorKind::NotFound.into())), None);
    }

    #[tokio::test]
    async fn the_system_resolver_resolves_localhost() {
        let found = SystemResolver.resolve("localhost", 8080).await.unwrap();
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080),
            "{found:?}"
        );
        assert!(!found.is_empty());
    }
}
