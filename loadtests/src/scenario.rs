//! `--scenario FILE`: timed actions during a run (signals, HTTP calls, shell commands), and
//! the record of what each one did.
//!
//! # File format (TOML)
//! ```toml
//! [[event]]
//! at = "5s"                 # from the start of the measured window (after warm-up)
//! action = "sim_latency"    # kill | stop | cont | reload | drill | http | sim_latency | exec
//! url = "http://${SIM}"     # ${NAME} is replaced by the environment variable NAME
//! latency_ms = 20
//! label = "sim +20 ms"      # optional: shown in the report and on the plot
//! timeout = "2s"            # optional, default 10s
//! ```
//!
//! The binary reads the file and expands `${NAME}` ([`expand_vars`]); [`Scenario::parse`]
//! validates it into typed [`Event`]s. [`run_events`] fires each event at its time in its own
//! task, so a slow action never delays the next one, and returns one [`EventRecord`] per event.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::duration::parse_duration;

/// Per-action time limit unless the event sets `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Outcome text is cut to this many characters (a response body can be long).
const OUTCOME_CHARS: usize = 200;

/// A validated scenario: events sorted by time.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    pub events: Vec<Event>,
}

/// One timed action.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// From the start of the measured window.
    pub at: Duration,
    /// The action's name in the file (`kill`, `reload`, ...).
    pub kind: &'static str,
    /// `label` from the file, or a description of the action.
    pub label: String,
    /// Default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    pub action: Action,
}

/// What an event does, reduced to three mechanisms.
// A scenario holds a handful of events, so boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `kill -s SIGNAL PID` (`kill`, `stop`, `cont`).
    Signal { pid: u32, signal: String },
    /// One HTTP/1.1 request (`reload`, `drill`, `http`, `sim_latency`); 2xx is success.
    Http {
        method: Method,
        url: Uri,
        headers: HeaderMap,
        body: Bytes,
    },
    /// `sh -c COMMAND`; exit status 0 is success.
    Exec { command: String },
}

/// A scenario file that cannot be used; the message names the event and field.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("event {index} ({action}): {message}")]
    Event {
        index: usize,
        action: String,
        message: String,
    },
    #[error("${{{0}}} is not set in the environment")]
    UnsetVar(String),
    #[error("unterminated ${{ in the scenario")]
    Unterminated,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    event: Vec<RawEvent>,
}

/// Fields shared by every action; the rest of the table is the action's own.
#[derive(Deserialize)]
struct RawEvent {
    at: String,
    label: Option<String>,
    timeout: Option<String>,
    #[serde(flatten)]
    action: toml::Table,
}

/// Each action's own fields; unknown fields are errors.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum RawAction {
    Kill {
        pid: u32,
        /// Signal name without `SIG`; default `KILL`.
        signal: Option<String>,
    },
    Stop {
        pid: u32,
    },
    Cont {
        pid: u32,
    },
    Reload {
        url: String,
        token: Option<String>,
    },
    Drill {
        url: String,
        body: Option<toml::Value>,
        token: Option<String>,
    },
    Http {
        url: String,
        method: Option<String>,
        body: Option<toml::Value>,
        token: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    SimLatency {
        url: String,
        latency_ms: Option<f64>,
        p50_ms: Option<f64>,
        p99_ms: Option<f64>,
        latency: Option<String>,
        error_rate: Option<f64>,
    },
    Exec {
        command: String,
    },
}

impl Scenario {
    /// Parses and validates a scenario (after [`expand_vars`]). Events come back sorted by
    /// `at`; equal times keep their order in the file.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text)?;
        let mut events = raw
            .event
            .into_iter()
            .enumerate()
            .map(|(i, e)| validate(i + 1, e))
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.at);
        Ok(Scenario { events })
    }

    /// The time of the last event, if any.
    pub fn last_at(&self) -> Option<Duration> {
        self.events.last().map(|e| e.at)
    }
}

fn validate(index: usize, raw: RawEvent) -> Result<Event, ScenarioError> {
    let name = raw
        .action
        .get("action")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_owned();
    let fail = |message: String| ScenarioError::Event {
        index,
        action: name.clone(),
        message,
    };
    let at = parse_duration(&raw.at).map_err(|e| fail(format!("at: {e}")))?;
    let timeout = match &raw.timeout {
        Some(t) => parse_duration(t).map_err(|e| fail(format!("timeout: {e}")))?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(fail("timeout must be greater than 0".into()));
    }
    let action: RawAction = toml::Value::Table(raw.action)
        .try_into()
        .map_err(|e: toml::de::Error| fail(e.message().to_owned()))?;
    let (kind, default_label, action) = build_action(action).map_err(fail)?;
    Ok(Event {
        at,
        kind,
        label: raw.label.unwrap_or(default_label),
        timeout,
        action,
    })
}

fn build_action(raw: RawAction) -> Result<(&'static str, String, Action), String> {
    let signal = |pid: u32, signal: &str| Action::Signal {
        pid,
        signal: signal.to_owned(),
    };
    Ok(match raw {
        RawAction::Kill { pid, signal: sig } => {
            let sig = sig.as_deref().unwrap_or("KILL").to_ascii_uppercase();
            let sig = sig.strip_prefix("SIG").unwrap_or(&sig).to_owned();
            let valid = !sig.is_empty() && sig.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid {
                return Err(format!(
                    "signal {sig:?} is not a signal name (KILL, TERM, ...)"
                ));
            }
            ("kill", format!("kill -{sig} {pid}"), signal(pid, &sig))
        }
        RawAction::Stop { pid } => ("stop", format!("SIGSTOP {pid}"), signal(pid, "STOP")),
        RawAction::Cont { pid } => ("cont", format!("SIGCONT {pid}"), signal(pid, "CONT")),
        RawAction::Reload { url, token } => (
            "reload",
            "config reload".to_owned(),
            http_action(Method::POST, &url, token, BTreeMap::new(), None)?,
        ),
        RawAction::Drill { url, body, token } => {
            let label = format!("drill {}", url_path(&url));
            let body = body.map(json_body).transpose()?;
            (
                "drill",
                label,
                http_action(Method::POST, &url, token, BTreeMap::new(), body)?,
            )
        }
        RawAction::Http {
            url,
            method,
            body,
            token,
            headers,
        } => {
            let method = match method {
                Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("method {m:?} is not an HTTP method"))?,
                None => Method::POST,
            };
            let label = format!("{method} {}", url_path(&url));
            let body = body.map(json_body).transpose()?;
            (
                "http",
                label,
                http_action(method, &url, token, headers, body)?,
            )
        }
        RawAction::SimLatency {
            url,
            latency_ms,
            p50_ms,
            p99_ms,
            latency,
            error_rate,
        } => {
            let mut body = serde_json::Map::new();
            let mut label = Vec::new();
            if let Some(v) = latency_ms {
                body.insert("latency_ms".into(), v.into());
                label.push(format!("{v} ms"));
            }
            if let Some(v) = p50_ms {
                body.insert("p50_ms".into(), v.into());
                label.push(format!("p50 {v} ms"));
            }
            if let Some(v) = p99_ms {
                body.insert("p99_ms".into(), v.into());
                label.push(format!("p99 {v} ms"));
            }
            if let Some(v) = latency {
                label.push(format!("latency {v}"));
                body.insert("latency".into(), v.into());
            }
            if let Some(v) = error_rate {
                body.insert("error_rate".into(), v.into());
                label.push(format!("errors {v}"));
            }
            if body.is_empty() {
                return Err(
                    "give latency_ms, p50_ms + p99_ms, latency = \"none\" or error_rate".into(),
                );
            }
            // A bare sim address means its control endpoint.
            let url = match url_path(&url) {
                "" | "/" => format!("{}/sim/control", url.trim_end_matches('/')),
                _ => url,
            };
            let body = Some(Bytes::from(serde_json::Value::Object(body).to_string()));
            (
                "sim_latency",
                format!("sim {}", label.join(", ")),
                http_action(Method::POST, &url, None, BTreeMap::new(), body)?,
            )
        }
        RawAction::Exec { command } => {
            if command.trim().is_empty() {
                return Err("command is empty".into());
            }
            ("exec", format!("exec {command}"), Action::Exec { command })
        }
    })
}

/// The path part of an `http://host/path` URL, for labels.
fn url_path(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.find('/').map_or("", |i| &rest[i..])
}

/// A TOML body: a string is sent as is, anything else as JSON.
fn json_body(value: toml::Value) -> Result<Bytes, String> {
    match value {
        toml::Value::String(s) => Ok(Bytes::from(s)),
        other => serde_json::to_string(&other)
            .map(Bytes::from)
            .map_err(|e| format!("body: {e}")),
    }
}

fn http_action(
    method: Method,
    url: &str,
    token: Option<String>,
    extra: BTreeMap<String, String>,
    body: Option<Bytes>,
) -> Result<Action, String> {
    let uri: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
        return Err(format!("url {url:?} must be http://host[:port]/path"));
    }
    let mut headers = HeaderMap::new();
    // The admin API takes changes only as JSON (a CSRF defence).
    if body.is_some() || method == Method::POST {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "token must be printable ASCII".to_owned())?;
        headers.insert(AUTHORIZATION, value);
    }
    for (name, value) in extra {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is invalid"))?;
        let value =
            HeaderValue::from_str(&value).map_err(|_| format!("header {name}: invalid value"))?;
        headers.insert(name, value);
    }
    Ok(Action::Http {
        method,
        url: uri,
        headers,
        body: body.unwrap_or_default(),
    })
}

/// Replaces every `${NAME}` in `text` by `lookup(NAME)`; an unknown name is an error. A `$`
/// not followed by `{` is left alone.
pub fn expand_vars(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ScenarioError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or(ScenarioError::Unterminated)?;
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| ScenarioError::UnsetVar(name.to_owned()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What one event did, as it appears in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventRecord {
    /// Scheduled time, in seconds from the start of the measured window.
    pub at_s: f64,
    /// When it actually started, same origin.
    pub started_s: f64,
    /// How long the action took, in ms (up to its timeout).
    pub took_ms: f64,
    pub action: &'static str,
    pub label: String,
    /// 2xx, exit status 0, or the signal delivered.
    pub ok: bool,
    /// `HTTP 200 OK: {body...}`, `exit 0`, `timed out after 10s`, ...
    pub outcome: String,
}

/// Fires each event at `origin + at`, each in its own task with its timeout, and waits for
/// all of them. `execute` performs one action: `Ok(text)` for success, `Err(text)` otherwise.
/// Records come back in event order.
pub async fn run_events<F, Fut>(
    origin: tokio::time::Instant,
    events: Vec<Event>,
    execute: F,
) -> Vec<EventRecord>
where
    F: Fn(Action) -> Fut,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let count = events.len();
    for (index, event) in events.into_iter().enumerate() {
        tokio::time::sleep_until(origin + event.at).await;
        let started = tokio::time::Instant::now();
        let work = execute(event.action.clone());
        tasks.spawn(async move {
            let result = tokio::time::timeout(event.timeout, work).await;
            let took = started.elapsed();
            let (ok, outcome) = match result {
                Ok(Ok(text)) => (true, text),
                Ok(Err(text)) => (false, text),
                Err(_) => (false, format!("timed out after {:?}", event.timeout)),
            };
            let record = EventRecord {
                at_s: event.at.as_secs_f64(),
                started_s: started.duration_since(origin).as_secs_f64(),
                took_ms: took.as_secs_f64() * 1e3,
                action: event.kind,
                label: event.label,
                ok,
                outcome: truncate(outcome),
            };
            (index, record)
        });
    }
    let mut records: Vec<Option<EventRecord>> = vec![None; count];
    while let Some(done) = tasks.join_next().await {
        let (index, record) = done.expect("scenario action panicked");
        records[index] = Some(record);
    }
    records.into_iter().flatten().collect()
}

fn truncate(mut text: String) -> String {
    let text_trimmed = text.trim_end();
    text.truncate(text_trimmed.len());
    if let Some((cut, _)) = text.char_indices().nth(OUTCOME_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Performs one action for real: `kill`, an HTTP/1.1 request, or `sh -c`.
pub async fn execute(action: Action) -> Result<String, String> {
    match action {
        Action::Signal { pid, signal } => {
            let out = tokio::process::Command::new("kill")
                .args(["-s", &signal, &pid.to_string()])
                .output()
                .await
                .map_err(|e| format!("cannot run kill: {e}"))?;
            if out.status.success() {
                Ok(format!("SIG{signal} sent to {pid}"))
            } else {
                Err(format!(
                    "kill failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        Action::Http {
            method,
            url,
            headers,
            body,
        } => http_request(method, url, headers, body)
            .await
            .map_err(|e| format!("request failed: {e}"))?,
        Action::Exec { command } => {
            let out = tokio::process::Command::new("sh")
                .args(["-c", &command])
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("cannot run sh: {e}"))?;
            let mut text = format!("{}", out.status);
            for stream in [&out.stdout, &out.stderr] {
                let s = String::from_utf8_lossy(stream);
                if !s.trim().is_empty() {
                    text.push_str(": ");
                    text.push_str(s.trim());
                }
            }
            if out.status.success() {
                Ok(text)
            } else {
                Err(text)
            }
        }
    }
}

/// One request on a fresh connection. The outer error is a transport failure; the inner
/// result is success (2xx) or not, with the status and the start of the body.
async fn http_request(
    method: Method,
    url: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Result<String, String>, crate::run::BoxError> {
    let authority = url.authority().ok_or("no authority")?.clone();
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = url.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
    *req.headers_mut() = headers;
    req.headers_mut()
        .insert(HOST, HeaderValue::from_str(authority.as_str())?);
    let response = sender.send_request(req).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let text = format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    Ok(if status.is_success() {
        Ok(text)
    } else {
        Err(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[event]]
at = "12s"
action = "sim_latency"
url = "http://127.0.0.1:9000"
latency = "none"

[[event]]
at = "5s"
action = "sim_latency"
url = "http://127.0.0.1:9000/"
latency_ms = 20
label = "sim slow"

[[event]]
at = "1s"
action = "reload"
url = "http://127.0.0.1:9901/admin/config/reload"
token = "s3cret"
timeout = "2s"

[[event]]
at = "2s"
action = "drill"
url = "http://127.0.0.1:9901/admin/regions/us-east/drain"
body = { reason = "drill", weight = 0 }

[[event]]
at = "3s"
action = "kill"
pid = 42
signal = "sigterm"

[[event]]
at = "3.5s"
action = "stop"
pid = 42

[[event]]
at = "4s"
action = "http"
method = "put"
url = "http://h/x"
body = "raw"
headers = { "x-a" = "1" }

[[event]]
at = "6s"
action = "exec"
command = "echo hi"
"#;

    #[test]
    fn parses_every_action() {
        let s = Scenario::parse(FILE).unwrap();
        let kinds: Vec<_> = s.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "reload",
                "drill",
                "kill",
                "stop",
                "http",
                "sim_latency",
                "exec",
                "sim_latency"
            ]
        );
        assert_eq!(s.last_at(), Some(Duration::from_secs(12)));

        let reload = &s.events[0];
        assert_eq!(reload.timeout, Duration::from_secs(2));
        let Action::Http {
            method,
            headers,
            body,
            url,
        } = &reload.action
        else {
            panic!("reload is HTTP")
        };
        assert_eq!(method, Method::POST);
        assert_eq!(headers[AUTHORIZATION], "Bearer s3cret");
        assert!(body.is_empty());
        assert_eq!(url.path(), "/admin/config/reload");

        let Action::Http { body, headers, .. } = &s.events[1].action else {
            panic!()
        };
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json, serde_json::json!({"reason": "drill", "weight": 0}));
        assert_eq!(headers[CONTENT_TYPE], "application/json");

        assert_eq!(
            s.events[2].action,
            Action::Signal {
                pid: 42,
                signal: "TERM".into()
            }
        );
        assert_eq!(s.events[2].label, "kill -TERM 42");
        assert_eq!(
            s.events[3].action,
            Action::Signal {
                pid: 42,
                signal: "STOP".into()
            }
        );

        let Action::Http {
            method,
            headers,
            body,
            ..
        } = &s.events[4].action
        else {
            panic!()
        };
        assert_eq!(method, Method::PUT);
        assert_eq!(headers["x-a"], "1");
        assert_eq!(&body[..], b"raw");

        let slow = &s.events[5];
        assert_eq!(slow.label, "sim slow");
        let Action::Http { url, body, .. } = &slow.action else {
            panic!()
        };
        assert_eq!(url.to_string(), "http://127.0.0.1:9000/sim/control");
        assert_eq!(&body[..], br#"{"latency_ms":20.0}"#);
        assert_eq!(s.events[7].label, "sim latency none");
        assert_eq!(
            s.events[6].action,
            Action::Exec {
                command: "echo hi".into()
            }
        );
    }

    #[test]
    fn rejects_bad_events() {
        for (bad, needle) in [
            ("[[event]]\nat = \"1s\"\naction = \"kill\"\n", "pid"),
            (
                "[[event]]\nat = \"1s\"\naction = \"kill\"\npid = 1\nurl = \"http://x/\"\n",
                "url",
            ),
            (
                "[[event]]\nat = \"soon\"\naction = \"exec\"\ncommand = \"x\"\n",
                "at",
            ),
            ("[[event]]\nat = \"1s\"\naction = \"explode\"\n", "explode"),
            (
                "[[event]]\nat = \"1s\"\naction = \"reload\"\nurl = \"https://x/\"\n",
                "http://",
            ),
            (
                "[[event]]\nat = \"1s\"\naction = \"sim_latency\"\nurl = \"http://x\"\n",
                "latency_ms",
            ),
            (
                "[[event]]\nat = \"1s\"\naction = \"exec\"\ncommand = \"x\"\ntimeout = \"0s\"\n",
                "timeout",
            ),
            ("[[events]]\nat = \"1s\"\n", "events"),
        ] {
            let err = Scenario::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        assert!(Scenario::parse("").unwrap().events.is_empty());
    }

    #[test]
    fn expands_variables() {
        let env = |name: &str| (name == "SIM").then(|| "127.0.0.1:9".to_owned());
        assert_eq!(
            expand_vars("url = \"http://${SIM}/\" # $5", env).unwrap(),
            "url = \"http://127.0.0.1:9/\" # $5"
        );
        assert!(matches!(
            expand_vars("${NOPE}", env),
            Err(ScenarioError::UnsetVar(n)) if n == "NOPE"
        ));
        assert!(matches!(
            expand_vars("${SIM", env),
            Err(ScenarioError::Unterminated)
        ));
    }

    fn exec_event(at_ms: u64, command: &str, timeout_ms: u64) -> Event {
        Event {
            at: Duration::from_millis(at_ms),
            kind: "exec",
            label: command.to_owned(),
            timeout: Duration::from_millis(timeout_ms),
            action: Action::Exec {
                command: command.to_owned(),
            },
        }
    }

    /// A fake executor: `sleep N` takes N ms of (paused) time, `fail` fails.
    async fn fake(action: Action) -> Result<String, String> {
        let Action::Exec { command } = action else {
            unreachable!()
        };
        if let Some(ms) = command.strip_prefix("sleep ") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if command == "fail" {
            Err("exit 1".into())
        } else {
            Ok("exit 0".into())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_fire_on_time_and_never_wait_for_each_other() {
        let origin = tokio::time::Instant::now() + Duration::from_secs(1);
        let events = vec![
            exec_event(0, "sleep 3000", 10_000),
            exec_event(500, "fail", 10_000),
            exec_event(1000, "sleep 5000", 2_000),
        ];
        let records = run_events(origin, events, fake).await;
        assert_eq!(records.len(), 3);
        // The slow first action did not hold back the others.
        let started: Vec<_> = records.iter().map(|r| r.started_s).collect();
        assert_eq!(started, [0.0, 0.5, 1.0]);
        assert!(records[0].ok);
        assert_eq!(records[0].took_ms, 3000.0);
        assert_eq!(
            (records[1].ok, records[1].outcome.as_str()),
            (false, "exit 1")
        );
        assert!(!records[2].ok);
        assert_eq!(records[2].outcome, "timed out after 2s");
        assert_eq!(records[2].took_ms, 2000.0);
        // Everything finished: the longest was the first (0 s + 3 s).
        assert_eq!(origin.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn outcomes_are_truncated() {
        assert_eq!(truncate("ok \n".into()), "ok");
        let long = truncate("é".repeat(300));
        assert_eq!(long.chars().count(), OUTCOME_CHARS + 1);
    }

    #[tokio::test]
    async fn exec_and_signal_for_real() {
        assert_eq!(
            execute(Action::Exec {
                command: "echo hi; exit 0".into()
            })
            .await,
            Ok("exit status: 0: hi".into())
        );
        assert!(execute(Action::Exec {
            command: "exit 3".into()
        })
        .await
        .is_err());
        // Signal 0 checks that the process exists without touching it.
        let me = std::process::id();
        assert!(execute(Action::Signal {
            pid: me,
            signal: "0".into()
        })
        .await
        .is_ok());
    }
}
