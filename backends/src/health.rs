//! Active health checks: one task per checked endpoint probes a path
//! (OIP readiness by default) and flips the endpoint's health after `fall`
//! failures or `rise` passes in a row.

use std::sync::Arc;

use bytes::Bytes;
use cascadia_config::HealthCheck;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};

use crate::client::UpstreamClient;
use crate::endpoint::Endpoint;

/// Aborts the checker task when dropped, so removing an endpoint from the
/// config stops its probes.
#[derive(Debug)]
pub struct Checker {
    task: tokio::task::JoinHandle<()>,
    /// The settings it runs with, to restart it when they change.
    pub settings: HealthCheck,
    /// The client it probes with: a reload that changes the backend's
    /// connect timeout or TLS must restart the probes too, or they would
    /// go on with the old ones while requests use the new.
    client: UpstreamClient,
}

impl Checker {
    /// Whether this checker already probes with `settings` over `client`.
    pub fn runs_with(&self, settings: &HealthCheck, client: &UpstreamClient) -> bool {
        self.settings == *settings && self.client.same_as(client)
    }

    #[cfg(test)]
    pub(crate) fn client_connect_timeout(&self) -> std::time::Duration {
        self.client.connect_timeout()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts probing `endpoint`. Must be called within a tokio runtime.
pub fn spawn(endpoint: Arc<Endpoint>, client: UpstreamClient, settings: HealthCheck) -> Checker {
    let task = tokio::spawn(run(endpoint, client.clone(), settings.clone()));
    Checker {
        task,
        settings,
        client,
    }
}

async fn run(endpoint: Arc<Endpoint>, client: UpstreamClient, settings: HealthCheck) {
    let mut interval = tokio::time::interval(settings.interval.get());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes = 0u32;
    let mut failures = 0u32;
    loop {
        interval.tick().await;
        if probe(&endpoint, &client, &settings).await {
            passes += 1;
            failures = 0;
            if !endpoint.is_check_healthy() && passes >= settings.rise {
                endpoint.set_check_healthy(true);
                tracing::info!(endpoint = %endpoint.authority(), "health check passing: endpoint healthy");
            }
        } else {
            failures += 1;
            passes = 0;
            if endpoint.is_check_healthy() && failures >= settings.fall {
                endpoint.set_check_healthy(false);
                tracing::warn!(endpoint = %endpoint.authority(), "health check failing: endpoint unhealthy");
            }
        }
    }
}

async fn probe(endpoint: &Endpoint, client: &UpstreamClient, settings: &HealthCheck) -> bool {
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(endpoint.authority().clone())
        .path_and_query(settings.path.as_str())
        .build()
    else {
        return false;
    };
    let Ok(request) = Request::get(uri).body(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    ) else {
        return false;
    };
    match client.send(endpoint, request, settings.timeout.get()).await {
        Ok(response) => {
            let ok = response.status().is_success();
            // Drain the body so the connection returns to the pool.
            let _ = response.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}
