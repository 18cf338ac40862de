//! Automated canary analysis: a route's canary weight climbs a plan of
//! steps, and at each step the canary is judged against stable over the
//! same window. It is promoted when every check passes and rolled back at
//! once (weight 0) when one fails, with the reason recorded.
//!
//! # Checks, per window (since the step began or the last evaluation)
//! - 5xx share: canary's may exceed stable's by `max_error_rate_increase`;
//! - p95 and p99: canary's may be `max_p95_ratio` / `max_p99_ratio` times
//!   stable's, plus `latency_slack`. Judged so that a canary's small
//!   window does not fail by chance: the check fails when more of the
//!   canary's answers are slower than that bound than the quantile allows
//!   (5%, 1%) with a binomial p-value below [`LATENCY_SIGNIFICANCE`]. At 20
//!   answers that takes 6 slower than the p95 bound, or 4 than the p99's;
//!   a canary slower across the board fails at its first window;
//! - class disagreement with stable, from the route's shadow comparison
//!   (pair primary = canary), when the route has one.
//!
//! A failing check rolls back as soon as the canary has `min_requests`
//! answers in the window; promotion also needs `min_dwell`. When stable gets
//! too little traffic to compare with (the last step), the canary is judged
//! against stable's numbers from the last window that had them.
//!
//! # State
//! The plan's state (step, status, decisions) is persisted after every
//! change, in Redis when `gateway.redis` is set (`cascadia:rollout:{route}`),
//! otherwise in a JSON file beside the config, and read back at start-up:
//! a restart or a reload resumes the plan where it was. Every decision goes
//! to the audit log and to `cascadia_rollout_*` metrics.
//!
//! # A fleet of replicas (Redis)
//! With Redis, every replica of the gateway runs the same plan, and one
//! decides for all:
//! - **One decider.** A lease (`cascadia:rollout-lease:{route}`), taken by
//!   whichever replica finds it free and renewed every tick, for
//!   [`lease_ttl`]; when the decider dies another takes over once it lapses.
//! - **The fleet's numbers.** Every replica writes its own per-version
//!   counts, latency histogram included, into `cascadia:rollout-stats:{route}`
//!   every tick; the decider judges the sum over the replicas heard from in
//!   the last [`STATS_FRESH`].
//! - **Fenced decisions.** Every change bumps the state's `generation`, and
//!   Redis stores it only over a lower one, so a decider that lost its
//!   lease cannot overwrite a newer decision.
//! - **Everyone follows.** Every replica reads the state every tick (100 ms)
//!   and applies a newer generation; at start-up this happens before the
//!   listener serves. An operator's action through any replica is such a
//!   change, so it applies to all.
//! - **Without Redis** a replica keeps the last state it saw and decides
//!   nothing (it cannot know it is the only decider).
//!
//! The file store has none of this: it is for a single replica.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cascadia_config::Rollout as Plan;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::stats::VersionCounts;
use crate::features::RedisTier;
use crate::routing::Route;
use crate::snapshot::SharedSnapshot;

/// Decisions kept in a plan's history.
const KEEP_DECISIONS: usize = 20;

/// Where a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

/// One decision, as the audit log and `rollout status` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub at_unix_ms: u64,
    /// `promote`, `rollback`, `pause`, `resume`, `abort` or `start`.
    pub action: String,
    pub reason: String,
    /// The canary weight after the decision.
    pub weight: u32,
}

/// A plan's persisted state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutState {
    pub route: String,
    pub canary: String,
    pub stable: String,
    pub steps: Vec<u32>,
    /// Index into `steps` of the current step.
    pub step: usize,
    pub status: Status,
    /// The canary's weight now.
    pub weight: u32,
    pub history: Vec<Decision>,
    /// Bumped by every change; the store keeps only a higher one, so a
    /// stale decider cannot overwrite a newer decision.
    #[serde(default)]
    pub generation: u64,
}

/// A window's numbers, shown with the state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub canary_requests: u64,
    pub stable_requests: u64,
    pub canary_error_rate: f64,
    pub stable_error_rate: f64,
    pub canary_p95_ms: Option<f64>,
    pub stable_p95_ms: Option<f64>,
    pub canary_p99_ms: Option<f64>,
    pub stable_p99_ms: Option<f64>,
    /// Canary answers slower than stable's p95 × `max_p95_ratio` +
    /// `latency_slack`, and than the same bound for p99.
    pub canary_over_p95_bound: u64,
    pub canary_over_p99_bound: u64,
    pub disagreement: Option<f64>,
}

/// The chance a latency check may fail a canary no slower than allowed:
/// small, because a rollout runs two checks per window over many windows,
/// and a loaded machine's stalls hit a few answers in a row.
pub const LATENCY_SIGNIFICANCE: f64 = 0.001;

/// How long a replica's published counts count toward the fleet's.
pub const STATS_FRESH: Duration = Duration::from_secs(5);

/// How long the decider's lease lasts unless renewed: three intervals, at
/// least a second, so a missed tick or two does not hand it over.
pub fn lease_ttl(plan: &Plan) -> Duration {
    (plan.interval.get() * 3).max(Duration::from_secs(1))
}

/// Every plan this gateway runs.
pub struct Rollouts {
    plans: Mutex<HashMap<String, Arc<Mutex<Live>>>>,
    store: Store,
    /// This replica's name in the fleet's shared state.
    replica: String,
    pub decisions: AtomicU64,
    pub rollbacks: AtomicU64,
}

/// A plan's state plus what is not persisted: the open window.
struct Live {
    state: RolloutState,
    window: Baseline,
    /// Stable's numbers from the last window that had enough of them.
    stable_reference: Option<VersionCounts>,
    last_window: Window,
    /// With Redis: whether this replica holds the lease now.
    decider: bool,
    /// With Redis: the (canary, stable) counts each replica published last.
    fleet: HashMap<String, (VersionCounts, VersionCounts)>,
    /// A write of ours was refused (a newer generation was stored): the
    /// next read adopts what is stored, whatever its generation.
    stale: bool,
}

struct Baseline {
    at: Instant,
    canary: VersionCounts,
    stable: VersionCounts,
    shadow_rows: (u64, u64),
    /// Each replica's counts when the window opened.
    fleet: HashMap<String, (VersionCounts, VersionCounts)>,
}

/// What became of a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saved {
    Stored,
    /// The store holds a newer generation (another replica decided
    /// meanwhile): this replica must adopt it.
    Newer,
    /// The store could not be reached.
    Unavailable,
}

/// Where state is persisted.
enum Store {
    Redis(Arc<RedisTier>),
    Files(PathBuf),
}

/// An operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "promote" => Some(Self::Promote),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }
}

impl Rollouts {
    /// Plans persist in Redis when there is one, else in files in
    /// `config_dir`.
    pub fn new(redis: Option<Arc<RedisTier>>, config_dir: &Path) -> Self {
        Self {
            plans: Mutex::default(),
            store: match redis {
                Some(redis) => Store::Redis(redis),
                None => Store::Files(config_dir.to_owned()),
            },
            replica: replica_name(),
            decisions: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
        }
    }

    /// Evaluates every plan every `tick` until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        snapshot: SharedSnapshot,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.evaluate(&snapshot).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// This replica's name in the fleet's shared state.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Every plan's state and current window, sorted by route.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = plans
            .values()
            .map(|live| {
                let live = live.lock().unwrap_or_else(|e| e.into_inner());
                let mut value = serde_json::json!(live.state);
                value["window"] = serde_json::json!(live.last_window);
                value["replica"] = serde_json::json!(self.replica);
                value["decider"] = serde_json::json!(match self.store {
                    Store::Redis(_) => live.decider,
                    Store::Files(_) => true,
                });
                value["last_decision"] = serde_json::json!(live.state.history.last());
                value
            })
            .collect();
        out.sort_by(|a, b| a["route"].as_str().cmp(&b["route"].as_str()));
        out
    }

    /// Applies an operator's action; the new state, or why not.
    pub async fn act(
        &self,
        route: &str,
        action: Action,
        snapshot: &SharedSnapshot,
    ) -> Result<serde_json::Value, String> {
        let live = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .cloned()
            .ok_or_else(|| format!("no rollout on route {route:?}"))?;
        // An action applies to the fleet's plan as it stands now.
        if let Store::Redis(redis) = &self.store {
            let current = snapshot.load_full();
            let route_now = current.routes.iter().find(|r| &*r.name == route).cloned();
            if let Some(route_now) = route_now {
                self.follow(redis, &route_now, &live).await;
            }
        }
        let (state, previous) = {
            let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
            let previous = live.state.clone();
            let current = snapshot.load();
            let route_now = current
                .routes
                .iter()
                .find(|r| &*r.name == route)
                .cloned()
                .ok_or("the route is gone")?;
            let finished = matches!(
                live.state.status,
                Status::Promoted | Status::RolledBack | Status::Aborted
            );
            match action {
                Action::Pause if live.state.status == Status::Running => {
                    live.state.status = Status::Paused;
                    self.decide(&mut live, "pause", "paused by an operator".into());
                }
                Action::Resume if live.state.status == Status::Paused => {
                    live.state.status = Status::Running;
                    live.reopen_window(&route_now);
                    self.decide(&mut live, "resume", "resumed by an operator".into());
                }
                Action::Promote if !finished => {
                    live.state.status = Status::Running;
                    self.advance(&mut live, &route_now, "promoted by an operator".into());
                }
                Action::Abort if !finished => {
                    self.roll_back(&mut live, Status::Aborted, "aborted by an operator".into());
                }
                _ => {
                    return Err(format!(
                        "cannot {action:?} a rollout that is {:?}",
                        live.state.status
                    ))
                }
            }
            apply_weights(&route_now, &live.state);
            (live.state.clone(), previous)
        };
        match self.save(&state).await {
            Saved::Stored => Ok(serde_json::json!(state)),
            saved => {
                // Not stored: the fleet's plan stands. This replica goes
                // back to what it had, and to the stored plan at the next
                // read.
                let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
                live.state = previous;
                live.stale = true;
                if let Some(route_now) = snapshot.load().routes.iter().find(|r| &*r.name == route) {
                    apply_weights(route_now, &live.state);
                }
                Err(match saved {
                    Saved::Newer => "another replica changed the plan meanwhile; try again",
                    _ => "Redis is unavailable: the fleet's plan cannot change now",
                }
                .to_owned())
            }
        }
    }

    async fn evaluate(&self, snapshot: &SharedSnapshot) {
        let current = snapshot.load_full();
        // A plan whose route (or whose rollout table) left the config is
        // forgotten here; its saved state stays for a later config.
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| {
                current
                    .routes
                    .iter()
                    .any(|r| &*r.name == name && r.rollout.is_some())
            });
        let mut changed = Vec::new();
        for route in current.routes.iter() {
            let Some(plan) = &route.rollout else { continue };
            let handle = match self.live(route, plan).await {
                Some(live) => live,
                None => continue,
            };
            let decides = match &self.store {
                Store::Redis(redis) => self.coordinate(redis, route, plan, &handle).await,
                Store::Files(_) => true,
            };
            let mut live = handle.lock().unwrap_or_else(|e| e.into_inner());
            if !decides {
                apply_weights(route, &live.state);
                continue;
            }
            if live.window.at.elapsed() < plan.interval.get()
                && live.state.status == Status::Running
            {
                apply_weights(route, &live.state);
                continue;
            }
            let before = (live.state.step, live.state.status);
            if live.state.status == Status::Running {
                self.judge(&mut live, route, plan);
            }
            apply_weights(route, &live.state);
            if (live.state.step, live.state.status) != before {
                changed.push((Arc::clone(&handle), live.state.clone()));
            }
        }
        for (live, state) in changed {
            if self.save(&state).await != Saved::Stored {
                live.lock().unwrap_or_else(|e| e.into_inner()).stale = true;
            }
        }
    }

    /// Reads every plan once and applies its weights: at start-up, before
    /// the listener serves, so a restarted replica serves the fleet's plan
    /// from its first request.
    pub async fn prime(&self, snapshot: &SharedSnapshot) {
        let current = snapshot.load_full();
        for route in current.routes.iter() {
            let Some(plan) = &route.rollout else { continue };
            if let Some(live) = self.live(route, plan).await {
                if let Store::Redis(redis) = &self.store {
                    self.follow(redis, route, &live).await;
                }
            }
        }
    }

    /// Adopts the shared state when it is newer than this replica's (or
    /// when a write of ours was refused).
    async fn follow(&self, redis: &RedisTier, route: &Route, live: &Arc<Mutex<Live>>) {
        let Some(Some(bytes)) = redis.get_raw(&redis_key(&route.name)).await else {
            return;
        };
        let Ok(stored) = serde_json::from_slice::<RolloutState>(&bytes) else {
            return;
        };
        let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
        let same_plan = stored.canary == live.state.canary
            && stored.steps == live.state.steps
            && stored.stable == live.state.stable;
        if same_plan && (stored.generation > live.state.generation || live.stale) {
            if stored.generation != live.state.generation {
                tracing::info!(route = %route.name, generation = stored.generation, step = stored.step, status = ?stored.status, "rollout: following the fleet's plan");
            }
            live.state = stored;
            live.stale = false;
            live.stable_reference = None;
            live.reopen_window(route);
            apply_weights(route, &live.state);
        }
    }

    /// One tick of the fleet protocol for `route`: follow the shared plan,
    /// publish this replica's counts, take or renew the lease, and, as the
    /// decider, read the fleet's counts. Whether this replica decides.
    async fn coordinate(
        &self,
        redis: &RedisTier,
        route: &Route,
        plan: &Plan,
        live: &Arc<Mutex<Live>>,
    ) -> bool {
        self.follow(redis, route, live).await;
        let record = {
            let live = live.lock().unwrap_or_else(|e| e.into_inner());
            own_record(route, &live.state)
        };
        let stats_key = stats_key(&route.name);
        redis
            .put_field(&stats_key, &self.replica, &record, STATS_FRESH * 2)
            .await;
        let held = redis
            .hold_lease(&lease_key(&route.name), &self.replica, lease_ttl(plan))
            .await
            == Some(true);
        let fleet = if held {
            redis
                .all_fields(&stats_key)
                .await
                .map(|fields| fresh_records(&fields))
        } else {
            None
        };
        let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fleet) = fleet else {
            // Without the lease, or without the fleet's numbers: decide
            // nothing.
            live.decider = false;
            return false;
        };
        live.fleet = fleet;
        if !live.decider {
            live.decider = true;
            tracing::info!(route = %route.name, replica = %self.replica, "rollout: this replica decides for the fleet");
            // A fresh window over the whole fleet.
            live.reopen_window(route);
        }
        true
    }

    /// The live plan for `route`: loaded from the store the first time, and
    /// restarted when the plan in config changed.
    async fn live(&self, route: &Route, plan: &Plan) -> Option<Arc<Mutex<Live>>> {
        let existing = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&*route.name)
            .cloned();
        if let Some(live) = existing {
            let same = {
                let live = live.lock().unwrap_or_else(|e| e.into_inner());
                live.state.canary == plan.canary && live.state.steps == plan.steps
            };
            if same {
                return Some(live);
            }
        }
        let stable = route
            .split
            .targets()
            .iter()
            .find(|t| *t.version != *plan.canary)?
            .version
            .to_string();
        let stored = self
            .load(&route.name)
            .await
            .filter(|s| s.canary == plan.canary && s.steps == plan.steps && s.stable == stable);
        let resumed = stored.is_some();
        let state = stored.unwrap_or_else(|| RolloutState {
            route: route.name.to_string(),
            canary: plan.canary.clone(),
            stable,
            steps: plan.steps.clone(),
            step: 0,
            status: Status::Running,
            weight: plan.steps[0],
            history: Vec::new(),
            generation: 0,
        });
        let mut live = Live {
            window: Baseline::now(route, &state, &HashMap::new()),
            state,
            stable_reference: None,
            last_window: Window::default(),
            decider: false,
            fleet: HashMap::new(),
            stale: false,
        };
        if !resumed {
            let first = live.state.weight;
            self.decide(&mut live, "start", format!("plan started at {first}%"));
        } else {
            tracing::info!(route = %route.name, step = live.state.step, status = ?live.state.status, "rollout resumed from its saved state");
        }
        apply_weights(route, &live.state);
        let state = live.state.clone();
        let live = Arc::new(Mutex::new(live));
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(route.name.to_string(), Arc::clone(&live));
        // Another replica may have started the plan first: then its state
        // is the fleet's, read at the next tick.
        if !resumed && self.save(&state).await != Saved::Stored {
            live.lock().unwrap_or_else(|e| e.into_inner()).stale = true;
        }
        Some(live)
    }

    /// Judges the open window: roll back on any failed check, promote when
    /// every check passes and the step has dwelt long enough.
    fn judge(&self, live: &mut Live, route: &Route, plan: &Plan) {
        let (Some(canary), Some(stable)) = (
            route.split.target(&live.state.canary),
            route.split.target(&live.state.stable),
        ) else {
            return;
        };
        let now = Instant::now();
        let (canary_window, mut stable_window) = match self.store {
            Store::Redis(_) => live.fleet_windows(),
            Store::Files(_) => (
                canary.stats.counts().since(&live.window.canary),
                stable.stats.counts().since(&live.window.stable),
            ),
        };
        let floor = (plan.min_requests / 10).max(1);
        if stable_window.requests() >= floor {
            live.stable_reference = Some(stable_window.clone());
        } else if let Some(reference) = &live.stable_reference {
            stable_window = reference.clone();
        }
        let disagreement = route.shadow.as_ref().and_then(|shadow| {
            let pair = shadow
                .stats
                .pairs()
                .into_iter()
                .find(|(primary, _)| **primary == *live.state.canary)?
                .1;
            let rows = pair.rows.load(Ordering::Relaxed) - live.window.shadow_rows.0;
            let agree = pair.rows_agree.load(Ordering::Relaxed) - live.window.shadow_rows.1;
            (rows > 0).then(|| 1.0 - agree as f64 / rows as f64)
        });
        let slack = plan.latency_slack.get().as_secs_f64() * 1000.0;
        let over = |stable_ms: Option<f64>, ratio: f64| {
            stable_ms.map_or(0, |stable| {
                canary_window.slower_than_ms(stable * ratio + slack)
            })
        };
        let stable_p95_ms = stable_window.percentile_ms(0.95);
        let stable_p99_ms = stable_window.percentile_ms(0.99);
        let window = Window {
            seconds: (now - live.window.at).as_secs_f64(),
            canary_over_p95_bound: over(stable_p95_ms, plan.max_p95_ratio),
            canary_over_p99_bound: over(stable_p99_ms, plan.max_p99_ratio),
            canary_requests: canary_window.requests(),
            stable_requests: stable_window.requests(),
            canary_error_rate: canary_window.error_rate(),
            stable_error_rate: stable_window.error_rate(),
            canary_p95_ms: canary_window.percentile_ms(0.95),
            stable_p95_ms,
            canary_p99_ms: canary_window.percentile_ms(0.99),
            stable_p99_ms,
            disagreement,
        };
        live.last_window = window.clone();
        if window.canary_requests < plan.min_requests {
            return;
        }
        if let Some(reason) = failed_check(&window, plan) {
            self.roll_back(live, Status::RolledBack, reason);
            return;
        }
        if now - live.window.at >= plan.min_dwell.get() {
            let reason = format!(
                "every check passed over {:.1}s: canary {} answers, errors {:.2}% vs {:.2}%, p99 {} vs {} ms",
                window.seconds,
                window.canary_requests,
                100.0 * window.canary_error_rate,
                100.0 * window.stable_error_rate,
                shown_ms(window.canary_p99_ms),
                shown_ms(window.stable_p99_ms),
            );
            self.advance(live, route, reason);
        }
    }

    /// To the next step, or promoted after the last.
    fn advance(&self, live: &mut Live, route: &Route, reason: String) {
        if live.state.step + 1 < live.state.steps.len() {
            live.state.step += 1;
            live.state.weight = live.state.steps[live.state.step];
        } else {
            live.state.status = Status::Promoted;
            live.state.weight = 100;
        }
        live.reopen_window(route);
        self.decide(live, "promote", reason);
    }

    fn roll_back(&self, live: &mut Live, status: Status, reason: String) {
        live.state.status = status;
        live.state.weight = 0;
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
        let action = if status == Status::Aborted {
            "abort"
        } else {
            "rollback"
        };
        self.decide(live, action, reason);
    }

    fn decide(&self, live: &mut Live, action: &str, reason: String) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        live.state.generation += 1;
        tracing::info!(
            target: "cascadia::audit",
            route = %live.state.route,
            action,
            weight = live.state.weight,
            step = live.state.step,
            reason = %reason,
            "rollout decision"
        );
        live.state.history.push(Decision {
            at_unix_ms: unix_ms(),
            action: action.to_owned(),
            reason,
            weight: live.state.weight,
        });
        if live.state.history.len() > KEEP_DECISIONS {
            live.state.history.remove(0);
        }
    }

    async fn load(&self, route: &str) -> Option<RolloutState> {
        let bytes = match &self.store {
            Store::Redis(redis) => redis.get_raw(&redis_key(route)).await.flatten()?,
            Store::Files(dir) => std::fs::read(state_path(dir, route)).ok()?,
        };
        serde_json::from_slice(&bytes).ok()
    }

    /// Persists `state`.
    async fn save(&self, state: &RolloutState) -> Saved {
        let Ok(bytes) = serde_json::to_vec(state) else {
            return Saved::Unavailable;
        };
        match &self.store {
            Store::Redis(redis) => {
                match redis
                    .set_if_newer(&redis_key(&state.route), state.generation, &bytes)
                    .await
                {
                    Some(true) => {}
                    Some(false) => {
                        tracing::info!(route = %state.route, generation = state.generation, "rollout: a newer decision is stored; adopting it");
                        return Saved::Newer;
                    }
                    None => {
                        tracing::warn!(route = %state.route, "cannot save the rollout state to Redis");
                        return Saved::Unavailable;
                    }
                }
            }
            Store::Files(dir) => {
                // Write-then-rename: a crash never leaves half a file.
                let path = state_path(dir, &state.route);
                let tmp = path.with_extension("tmp");
                let written =
                    std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(error) = written {
                    // A single replica's own state: it goes on with it.
                    tracing::warn!(route = %state.route, %error, "cannot save the rollout state");
                }
            }
        }
        Saved::Stored
    }

    /// Current canary weight and step per route, for `/metrics`.
    pub fn gauges(&self) -> Vec<(String, u32, usize, Status)> {
        let plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans
            .values()
            .map(|live| {
                let live = live.lock().unwrap_or_else(|e| e.into_inner());
                (
                    live.state.route.clone(),
                    live.state.weight,
                    live.state.step,
                    live.state.status,
                )
            })
            .collect()
    }
}

/// The first failed check, as a reason; `None` when all pass.
fn failed_check(window: &Window, plan: &Plan) -> Option<String> {
    let increase = window.canary_error_rate - window.stable_error_rate;
    if increase > plan.max_error_rate_increase {
        return Some(format!(
            "error rate {:.2}% vs stable {:.2}% (tolerance +{:.2}%)",
            100.0 * window.canary_error_rate,
            100.0 * window.stable_error_rate,
            100.0 * plan.max_error_rate_increase
        ));
    }
    let slack = plan.latency_slack.get().as_secs_f64() * 1000.0;
    for (name, allowed, canary, stable, ratio, over) in [
        (
            "p95",
            0.05,
            window.canary_p95_ms,
            window.stable_p95_ms,
            plan.max_p95_ratio,
            window.canary_over_p95_bound,
        ),
        (
            "p99",
            0.01,
            window.canary_p99_ms,
            window.stable_p99_ms,
            plan.max_p99_ratio,
            window.canary_over_p99_bound,
        ),
    ] {
        let (Some(canary), Some(stable)) = (canary, stable) else {
            continue;
        };
        let p_value = binomial_tail(window.canary_requests, allowed, over);
        if p_value < LATENCY_SIGNIFICANCE {
            return Some(format!(
                "{name} {canary:.1} ms vs stable {stable:.1} ms: {over} of {} canary answers slower than {:.1} ms \
                 (tolerance {ratio}x + {slack} ms; p = {p_value:.1e})",
                window.canary_requests,
                stable * ratio + slack,
            ));
        }
    }
    if let Some(disagreement) = window.disagreement {
        if disagreement > plan.max_disagreement {
            return Some(format!(
                "disagrees with stable on {:.1}% of rows (tolerance {:.1}%)",
                100.0 * disagreement,
                100.0 * plan.max_disagreement
            ));
        }
    }
    None
}

/// P(X ≥ k) for X ~ Binomial(n, p): how likely `k` or more of `n` answers
/// fall past a quantile that a share `p` may pass. Summed from `k` up, in
/// logs, until the terms stop mattering: past the mean they shrink
/// geometrically, so the loop is short even for large windows.
fn binomial_tail(n: u64, p: f64, k: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if k as f64 <= n as f64 * p {
        // At or below the mean: nowhere near significant.
        return 1.0;
    }
    let (n_f, k_f) = (n as f64, k as f64);
    // ln C(n, k), as a sum of ln((n - k + i) / i).
    let ln_choose: f64 = (1..=k)
        .map(|i| ((n_f - k_f + i as f64) / i as f64).ln())
        .sum();
    let mut ln_term = ln_choose + k_f * p.ln() + (n_f - k_f) * (1.0 - p).ln();
    let odds = (p / (1.0 - p)).ln();
    let mut tail = 0.0;
    for j in k..=n {
        let term = ln_term.exp();
        tail += term;
        if term < tail * 1e-12 {
            break;
        }
        ln_term += ((n - j) as f64 / (j + 1) as f64).ln() + odds;
    }
    tail.min(1.0)
}

/// A latency for a decision's reason: `12.3`, or `none` without answers.
fn shown_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "none".to_owned(), |ms| format!("{ms:.1}"))
}

/// Sets the split's weights to the plan's: the canary's, and the rest to
/// stable. Idempotent; run every tick so a reload cannot undo it.
fn apply_weights(route: &Route, state: &RolloutState) {
    let canary_weight = state.weight.min(100);
    if let (Some(canary), Some(stable)) = (
        route.split.target(&state.canary),
        route.split.target(&state.stable),
    ) {
        canary.set_weight(canary_weight);
        stable.set_weight(100 - canary_weight);
    }
    *route
        .weight_override
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(vec![
        (state.canary.clone(), canary_weight),
        (state.stable.clone(), 100 - canary_weight),
    ]);
}

impl Live {
    /// Opens a new window now, over this replica's counts and the fleet's.
    fn reopen_window(&mut self, route: &Route) {
        self.window = Baseline::now(route, &self.state, &self.fleet);
    }

    /// The fleet's (canary, stable) counts since the window opened: each
    /// replica's own difference, summed. A replica first heard from
    /// mid-window counts from then; one whose counts went backwards (it
    /// restarted) counts from zero.
    fn fleet_windows(&mut self) -> (VersionCounts, VersionCounts) {
        let mut canary = VersionCounts::default();
        let mut stable = VersionCounts::default();
        for (replica, (now_canary, now_stable)) in &self.fleet {
            let base = self
                .window
                .fleet
                .entry(replica.clone())
                .or_insert_with(|| (now_canary.clone(), now_stable.clone()));
            if now_canary.requests() < base.0.requests()
                || now_stable.requests() < base.1.requests()
            {
                *base = Default::default();
            }
            canary.add(&now_canary.since(&base.0));
            stable.add(&now_stable.since(&base.1));
        }
        (canary, stable)
    }
}

impl Baseline {
    fn now(
        route: &Route,
        state: &RolloutState,
        fleet: &HashMap<String, (VersionCounts, VersionCounts)>,
    ) -> Self {
        let counts = |version: &str| {
            route
                .split
                .target(version)
                .map(|t| t.stats.counts())
                .unwrap_or_default()
        };
        let shadow_rows = route
            .shadow
            .as_ref()
            .and_then(|shadow| {
                let (_, pair) = shadow
                    .stats
                    .pairs()
                    .into_iter()
                    .find(|(primary, _)| **primary == *state.canary)?;
                Some((
                    pair.rows.load(Ordering::Relaxed),
                    pair.rows_agree.load(Ordering::Relaxed),
                ))
            })
            .unwrap_or((0, 0));
        Self {
            at: Instant::now(),
            canary: counts(&state.canary),
            stable: counts(&state.stable),
            shadow_rows,
            fleet: fleet.clone(),
        }
    }
}

/// This replica's name in the fleet's state: its host, process and a
/// random part, so two processes never share one.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// What this replica publishes for the fleet: when, and its cumulative
/// (canary, stable) counts.
fn own_record(route: &Route, state: &RolloutState) -> Vec<u8> {
    let counts = |version: &str| {
        let counts = route
            .split
            .target(version)
            .map(|t| t.stats.counts())
            .unwrap_or_default();
        counts_json(&counts)
    };
    serde_json::to_vec(&serde_json::json!({
        "at_unix_ms": unix_ms(),
        "canary": counts(&state.canary),
        "stable": counts(&state.stable),
    }))
    .unwrap_or_default()
}

/// Counts as JSON: the status classes, and the latency histogram's
/// non-empty buckets as `[index, count]` pairs.
fn counts_json(counts: &VersionCounts) -> serde_json::Value {
    let latency: Vec<[u64; 2]> = counts
        .latency
        .counts()
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| [i as u64, *n])
        .collect();
    serde_json::json!({"by_class": counts.by_class, "latency": latency})
}

fn counts_from_json(value: &serde_json::Value) -> Option<VersionCounts> {
    let by_class: [u64; 5] = serde_json::from_value(value.get("by_class")?.clone()).ok()?;
    let pairs: Vec<[u64; 2]> = serde_json::from_value(value.get("latency")?.clone()).ok()?;
    let mut dense = vec![0u64; crate::core::histogram::BUCKETS];
    for [i, n] in pairs {
        *dense.get_mut(usize::try_from(i).ok()?)? = n;
    }
    Some(VersionCounts {
        by_class,
        latency: crate::core::histogram::HistogramCounts::from_counts(dense)?,
    })
}

/// The replicas' records written within [`STATS_FRESH`], by replica.
fn fresh_records(fields: &[(String, Vec<u8>)]) -> HashMap<String, (VersionCounts, VersionCounts)> {
    let now = unix_ms();
    let fresh_ms = STATS_FRESH.as_millis() as u64;
    fields
        .iter()
        .filter_map(|(replica, bytes)| {
            let record: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            let at = record.get("at_unix_ms")?.as_u64()?;
            if now.saturating_sub(at) > fresh_ms {
                return None;
            }
            let canary = counts_from_json(record.get("canary")?)?;
            let stable = counts_from_json(record.get("stable")?)?;
            Some((replica.clone(), (canary, stable)))
        })
        .collect()
}

fn lease_key(route: &str) -> String {
    format!("cascadia:rollout-lease:{route}")
}

fn stats_key(route: &str) -> String {
    format!("cascadia:rollout-stats:{route}")
}

fn redis_key(route: &str) -> String {
    format!("cascadia:rollout:{route}")
}

fn state_path(dir: &Path, route: &str) -> PathBuf {
    dir.join(format!(".cascadia-rollout-{route}.json"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        cascadia_config::parse(
            r#"
[[backends]]
name = "a"
region = "r"
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "m"
match = { model = "m" }
[[routes.split]]
version = "stable"
weight = 100
backends = ["a"]
[[routes.split]]
version = "canary"
weight = 0
backends = ["a"]
[routes.rollout]
canary = "canary"
"#,
        )
        .unwrap()
        .routes[0]
            .rollout
            .clone()
            .unwrap()
    }

    fn window() -> Window {
        Window {
            canary_requests: 200,
            stable_requests: 2000,
            canary_error_rate: 0.0,
            stable_error_rate: 0.0,
            canary_p95_ms: Some(10.0),
            stable_p95_ms: Some(10.0),
            canary_p99_ms: Some(25.0),
            stable_p99_ms: Some(25.0),
            ..Window::default()
        }
    }

    #[test]
    fn the_binomial_tail_matches_known_values() {
        // P(X >= 5) for Binomial(20, 0.05) = 0.002574; P(X >= 6) = 0.000329;
        // for Binomial(20, 0.01), P(X >= 3) = 0.001004 (summed exactly in
        // Python with math.comb).
        assert!((binomial_tail(20, 0.05, 5) - 0.002_574).abs() < 1e-6);
        assert!((binomial_tail(20, 0.05, 6) - 0.000_329).abs() < 1e-6);
        assert!((binomial_tail(20, 0.01, 3) - 0.001_004).abs() < 1e-6);
        assert_eq!(binomial_tail(20, 0.05, 0), 1.0);
        assert_eq!(binomial_tail(20, 0.05, 21), 0.0);
        assert!((binomial_tail(20, 0.05, 20) - 0.05f64.powi(20)).abs() < 1e-30);
        // A large window stays exact and quick: 600 of 10,000 at 5% is
        // 4.5e-6.
        let tail = binomial_tail(10_000, 0.05, 600);
        assert!((tail - 4.509e-6).abs() < 1e-8, "{tail}");
    }

    #[test]
    fn a_small_window_fails_a_latency_check_only_on_many_slow_answers() {
        let plan = plan();
        // 20 answers, 2 past the p95 bound: the p95 reads slow, but two in
        // twenty happen to an equal canary one time in four.
        let unlucky = Window {
            canary_requests: 20,
            canary_p95_ms: Some(40.0),
            canary_over_p95_bound: 2,
            ..window()
        };
        assert_eq!(failed_check(&unlucky, &plan), None);
        let slow = Window {
            canary_over_p95_bound: 12,
            ..unlucky
        };
        let reason = failed_check(&slow, &plan).unwrap();
        assert!(
            reason.starts_with("p95 40.0 ms vs stable 10.0 ms: 12 of 20"),
            "{reason}"
        );
    }

    #[test]
    fn each_check_fails_past_its_tolerance_only() {
        let plan = plan();
        assert_eq!(failed_check(&window(), &plan), None);
        let errors = Window {
            canary_error_rate: 0.02,
            ..window()
        };
        assert!(failed_check(&errors, &plan)
            .unwrap()
            .starts_with("error rate"));
        let slow = Window {
            canary_p99_ms: Some(100.0),
            canary_over_p99_bound: 10,
            ..window()
        };
        assert!(failed_check(&slow, &plan).unwrap().starts_with("p99"));
        // Within ratio plus slack (25 × 2 + 5 = 55 ms): no answer over it.
        let a_bit_slower = Window {
            canary_p99_ms: Some(50.0),
            ..window()
        };
        assert_eq!(failed_check(&a_bit_slower, &plan), None);
        let disagreeing = Window {
            disagreement: Some(0.2),
            ..window()
        };
        assert!(failed_check(&disagreeing, &plan)
            .unwrap()
            .starts_with("disagrees"));
    }
}
