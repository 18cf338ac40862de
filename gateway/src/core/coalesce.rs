//! Coalescing concurrent work into one batch: the first caller for a key
//! leads a batch and waits a short while; callers that come meanwhile join
//! it and wait for their share of the result. Generic over what is batched
//! and what each member gets back, so it knows nothing of the cascade.
//!
//! Bounded three ways: a batch holds at most `max_weight` (e.g. rows), it
//! closes at the leader's deadline, and a caller only joins a batch that
//! closes within its own wait. A leader that goes away (its client hung up)
//! takes its batch with it: the members' receivers then fail at once, and
//! they go alone rather than wait for an answer that will never come.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Batches being gathered, by key.
#[derive(Debug)]
pub struct Coalescer<K, I, R> {
    pending: Mutex<HashMap<K, Gathering<I, R>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Gathering<I, R> {
    id: u64,
    members: Vec<Member<I, R>>,
    weight: usize,
    max_weight: usize,
    closes_at: Instant,
    full: Arc<Notify>,
}

/// One item of a batch, and where its result goes (`None` for the
/// leader's own, which the leader keeps).
#[derive(Debug)]
pub struct Member<I, R> {
    pub item: I,
    pub weight: usize,
    pub reply: Option<oneshot::Sender<R>>,
}

/// What a caller of [`Coalescer::join`] does next.
pub enum Joined<'a, K: Hash + Eq + Clone, I, R> {
    /// Leads a batch: wait with [`Leader::gather`], then send it.
    Leader(Leader<'a, K, I, R>),
    /// Joined a batch: the leader sends the result here.
    Member(oneshot::Receiver<R>),
    /// No batch could take the item (too heavy, or one closing too late):
    /// do the work alone.
    Alone(I),
}

impl<K: Hash + Eq + Clone, I, R> Default for Coalescer<K, I, R> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone, I, R> Coalescer<K, I, R> {
    /// Adds `item` (of `weight`) to the batch gathering under `key`, or
    /// starts one that closes after `wait` and holds at most `max_weight`.
    pub fn join(
        &self,
        key: K,
        item: I,
        weight: usize,
        max_weight: usize,
        wait: Duration,
    ) -> Joined<'_, K, I, R> {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(batch) = pending.get_mut(&key) {
            let fits = batch.weight + weight <= batch.max_weight;
            if fits && batch.closes_at <= now + wait {
                let (reply, receiver) = oneshot::channel();
                batch.members.push(Member {
                    item,
                    weight,
                    reply: Some(reply),
                });
                batch.weight += weight;
                if batch.weight >= batch.max_weight {
                    batch.full.notify_one();
                }
                return Joined::Member(receiver);
            }
            return Joined::Alone(item);
        }
        if weight >= max_weight || wait.is_zero() {
            return Joined::Alone(item);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let full = Arc::new(Notify::new());
        let closes_at = now + wait;
        pending.insert(
            key.clone(),
            Gathering {
                id,
                members: vec![Member {
                    item,
                    weight,
                    reply: None,
                }],
                weight,
                max_weight,
                closes_at,
                full: Arc::clone(&full),
            },
        );
        Joined::Leader(Leader {
            coalescer: self,
            key,
            id,
            closes_at,
            full,
            taken: false,
        })
    }
}

/// The leader of a gathering batch. Dropped before [`Leader::gather`]
/// returns, it removes the batch, so its members stop waiting.
pub struct Leader<'a, K: Hash + Eq + Clone, I, R> {
    coalescer: &'a Coalescer<K, I, R>,
    key: K,
    id: u64,
    closes_at: Instant,
    full: Arc<Notify>,
    taken: bool,
}

impl<K: Hash + Eq + Clone, I, R> Leader<'_, K, I, R> {
    /// Waits until the batch is full or its time is up, then takes it: the
    /// leader's own item first, then the members' in the order they came.
    pub async fn gather(mut self) -> Vec<Member<I, R>> {
        tokio::select! {
            () = self.full.notified() => {}
            () = tokio::time::sleep_until(self.closes_at) => {}
        }
        self.take()
    }

    fn take(&mut self) -> Vec<Member<I, R>> {
        self.taken = true;
        let mut pending = self
            .coalescer
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match pending.get(&self.key) {
            Some(batch) if batch.id == self.id => pending
                .remove(&self.key)
                .map(|b| b.members)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, I, R> Drop for Leader<'_, K, I, R> {
    fn drop(&mut self) {
        if !self.taken {
            // The members' senders go with the batch: they learn at once.
            drop(self.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Coalescer<&'static str, u32, u32>;

    #[tokio::test(start_paused = true)]
    async fn members_join_until_the_batch_closes_and_get_their_replies() {
        let rows = Rows::default();
        let Joined::Leader(leader) = rows.join("v1", 1, 1, 10, Duration::from_millis(5)) else {
            panic!("the first caller leads");
        };
        let Joined::Member(second) = rows.join("v1", 2, 1, 10, Duration::from_millis(50)) else {
            panic!("a caller that can wait joins");
        };
        // One whose own wait is shorter than the batch's goes alone.
        assert!(matches!(
            rows.join("v1", 3, 1, 10, Duration::from_millis(1)),
            Joined::Alone(3)
        ));
        // Another key is another batch.
        assert!(matches!(
            rows.join("v2", 4, 1, 10, Duration::from_millis(5)),
            Joined::Leader(_)
        ));
        let started = Instant::now();
        let members = leader.gather().await;
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        let items: Vec<u32> = members.iter().map(|m| m.item).collect();
        assert_eq!(items, vec![1, 2]);
        for member in members {
            if let Some(reply) = member.reply {
                reply.send(member.item * 10).unwrap();
            }
        }
        assert_eq!(second.await.unwrap(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_sent_at_once() {
        let rows = Rows::default();
        let Joined::Leader(leader) = rows.join("v1", 1, 2, 4, Duration::from_secs(1)) else {
            panic!("leads");
        };
        assert!(
            matches!(
                rows.join("v1", 2, 3, 4, Duration::from_secs(1)),
                Joined::Alone(2)
            ),
            "too heavy for what is left"
        );
        let Joined::Member(_member) = rows.join("v1", 3, 2, 4, Duration::from_secs(1)) else {
            panic!("joins");
        };
        let started = Instant::now();
        let members = leader.gather().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "full: no waiting");
        assert_eq!(members.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_goes_away_releases_its_members() {
        let rows = Rows::default();
        let leader = rows.join("v1", 1, 1, 10, Duration::from_secs(1));
        let Joined::Member(member) = rows.join("v1", 2, 1, 10, Duration::from_secs(2)) else {
            panic!("joins");
        };
        drop(leader);
        assert!(member.await.is_err(), "the member learns at once");
        // And the key is free for a new batch.
        assert!(matches!(
            rows.join("v1", 3, 1, 10, Duration::from_secs(1)),
            Joined::Leader(_)
        ));
    }
}
