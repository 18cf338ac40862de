//! Escalation micro-batching: the uncertain rows of concurrent requests on
//! one route and split version go to stage 2 in one call, and each request
//! gets its own rows' answers back.
//!
//! The first request to escalate leads a batch and waits at most
//! `max_wait`, and at most `deadline_share` of its remaining deadline;
//! requests that escalate meanwhile join it if it closes within their own
//! wait, up to `max_rows` rows (a full batch goes at once). If the requests
//! cannot be combined (their inputs differ) or stage 2 refuses the combined
//! call or answers it unusably, every request's rows are sent again alone,
//! so one bad request cannot fail the others. If stage 2 is unavailable,
//! every member learns so and its route's `on_unavailable` decides.
//!
//! REST only: gRPC escalations are sent alone. The combined call carries
//! the leader's headers (its request id, trace context and credentials).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cascadia_config::Batching;
use cascadia_oip::json::InferRequest;

use super::{stage2, Call};
use crate::core::coalesce::{Joined, Member};
use crate::core::errors::GatewayError;
use crate::routing::stages::{BatchItem, BatchReply, EscalationBatcher};
use crate::routing::Target;

/// One request's escalation, as [`Call::escalate_batched`] takes it.
pub(super) struct Escalation<'a> {
    pub target: &'a Target,
    pub parts: http::request::Parts,
    /// The stage-2 request for this request's rows alone.
    pub sub: InferRequest,
    pub rows: usize,
    pub body_budget: Duration,
    /// Makes `sub` again.
    pub rebuild: &'a (dyn Fn() -> InferRequest + Send + Sync),
}

impl Call<'_> {
    /// The escalation of `rows` rows (`sub`, which `rebuild` makes again
    /// should the batch vanish with it), through the route's batcher.
    pub(super) async fn escalate_batched(
        &self,
        batcher: &Arc<EscalationBatcher>,
        batching: Batching,
        escalation: Escalation<'_>,
    ) -> Result<stage2::Outcome, GatewayError> {
        let Escalation {
            target,
            parts,
            sub,
            rows,
            body_budget,
            rebuild,
        } = escalation;
        let wait = batching
            .max_wait
            .get()
            .min(body_budget.mul_f64(batching.deadline_share));
        let item = BatchItem {
            sub,
            budget: body_budget,
        };
        let key = Arc::clone(&target.version);
        let stats = &self.cx.stage.stats;
        match batcher.join(key, item, rows, batching.max_rows, wait) {
            Joined::Alone(item) => self.send(target, parts, item.sub, rows, body_budget).await,
            Joined::Member(reply) => {
                let started = tokio::time::Instant::now();
                let reply = tokio::time::timeout(body_budget, reply).await;
                let left = body_budget.saturating_sub(started.elapsed());
                match reply {
                    Ok(Ok(BatchReply::Answered {
                        scores,
                        model_version,
                        backend,
                    })) => Ok(stage2::Outcome::Answered(stage2::Answer {
                        scores,
                        model_version,
                        backend,
                    })),
                    Ok(Ok(BatchReply::Unavailable)) => Ok(stage2::Outcome::Unavailable(None)),
                    // Counted where the batch was given up.
                    Ok(Ok(BatchReply::Alone(item))) => {
                        self.send(target, parts, item.sub, rows, left).await
                    }
                    // The leader went away (its client hung up) and took
                    // the batch with it: this request goes alone with what
                    // is left of its budget, unharmed.
                    Ok(Err(_)) => {
                        stats.batch_retries.fetch_add(1, Ordering::Relaxed);
                        self.send(target, parts, rebuild(), rows, left).await
                    }
                    Err(_) => Ok(stage2::Outcome::Unavailable(None)),
                }
            }
            Joined::Leader(leader) => {
                let members = leader.gather().await;
                self.lead(target, parts, members, body_budget).await
            }
        }
    }

    /// Sends a gathered batch (the leader's own item first) and answers
    /// every member; returns the leader's outcome.
    async fn lead(
        &self,
        target: &Target,
        parts: http::request::Parts,
        mut members: Vec<Member<BatchItem, BatchReply>>,
        body_budget: Duration,
    ) -> Result<stage2::Outcome, GatewayError> {
        let stats = &self.cx.stage.stats;
        if members.len() == 1 {
            let own = members.pop().expect("the leader's item");
            return self
                .send(target, parts, own.item.sub, own.weight, body_budget)
                .await;
        }
        let weights: Vec<usize> = members.iter().map(|m| m.weight).collect();
        let merged = {
            let subs: Vec<&InferRequest> = members.iter().map(|m| &m.item.sub).collect();
            cascadia_cascade::stage2::merge(&subs, &weights)
        };
        let Some(merged) = merged else {
            return self
                .everyone_alone(target, parts, members, body_budget)
                .await;
        };
        // The combined call waits no longer than its most hurried member.
        let budget = members
            .iter()
            .map(|m| m.item.budget)
            .min()
            .unwrap_or(body_budget);
        let total: usize = weights.iter().sum();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .batched_requests
            .fetch_add(members.len() as u64, Ordering::Relaxed);
        let head = fresh_parts(&parts);
        let outcome = self.send(target, head, merged, total, budget).await?;
        match outcome {
            stage2::Outcome::Answered(answer) => {
                let mut scores = answer.scores.into_iter();
                let mut own = None;
                for member in members {
                    let mine: Vec<f64> = scores.by_ref().take(member.weight).collect();
                    match member.reply {
                        Some(reply) => {
                            let _ = reply.send(BatchReply::Answered {
                                scores: mine,
                                model_version: answer.model_version.clone(),
                                backend: answer.backend.clone(),
                            });
                        }
                        None => own = Some(mine),
                    }
                }
                Ok(stage2::Outcome::Answered(stage2::Answer {
                    scores: own.unwrap_or_default(),
                    model_version: answer.model_version,
                    backend: answer.backend,
                }))
            }
            stage2::Outcome::Unavailable(error) => {
                for member in members {
                    if let Some(reply) = member.reply {
                        let _ = reply.send(BatchReply::Unavailable);
                    }
                }
                Ok(stage2::Outcome::Unavailable(error))
            }
            // Refused, unusable, or the leader's own client failed: each
            // request's rows go again on their own.
            _ => {
                self.everyone_alone(target, parts, members, body_budget)
                    .await
            }
        }
    }

    /// Hands every member its item back to send alone, and sends the
    /// leader's.
    async fn everyone_alone(
        &self,
        target: &Target,
        parts: http::request::Parts,
        members: Vec<Member<BatchItem, BatchReply>>,
        body_budget: Duration,
    ) -> Result<stage2::Outcome, GatewayError> {
        let stats = &self.cx.stage.stats;
        let mut own = None;
        for member in members {
            stats.batch_retries.fetch_add(1, Ordering::Relaxed);
            match member.reply {
                Some(reply) => {
                    let _ = reply.send(BatchReply::Alone(member.item));
                }
                None => own = Some((member.item, member.weight)),
            }
        }
        let (item, rows) = own.ok_or(GatewayError::BadRequest("empty batch"))?;
        self.send(target, parts, item.sub, rows, body_budget).await
    }
}

/// A request head like `parts` (method, URI, headers) for another call:
/// `Parts` itself cannot be cloned (its extensions).
fn fresh_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut fresh = http::Request::new(()).into_parts().0;
    fresh.method = parts.method.clone();
    fresh.uri = parts.uri.clone();
    fresh.version = parts.version;
    fresh.headers = parts.headers.clone();
    fresh
}
