//! Fuzzes the match phase: arbitrary paths through `cascadia_oip::path::parse`
//! and a `RouteTable` built from a small fixed config (two model routes, three
//! nested path-prefix routes, one prefix inside `/v2/models`), matched by the
//! proxy's own `cascadia::proxy::match_request`: dot segments (also `%2e`) and
//! encoded slashes refused, then the OIP model via `by_model`, else `by_path`.
//! Must hold: nothing panics; a parsed OIP model or version is one safe
//! segment (not empty, no `/`, no `%`, not `.`/`..`) and `model_path`
//! rebuilds the path it came from; a matched route is one the
//! config named, by the model asked for, or by the longest prefix that matches
//! the path on a segment boundary.
#![no_main]

use std::sync::OnceLock;

use cascadia::routing::{RouteRuntimes, RouteTable};
use cascadia_oip::path::{self, OipKind};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[[backends]]
name = "b"
region = "r"
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
[[routes.split]]
version = "stable"
weight = 90
backends = ["b"]
[[routes.split]]
version = "canary"
weight = 10
backends = ["b"]

[[routes]]
name = "cancer"
match = { model = "cancer-lr" }
backends = ["b"]

[[routes]]
name = "api"
match = { path_prefix = "/api" }
backends = ["b"]

[[routes]]
name = "svc"
match = { path_prefix = "/api/svc/" }
backends = ["b"]

[[routes]]
name = "svc-v2"
match = { path_prefix = "/api/svc/v2" }
backends = ["b"]

[[routes]]
name = "legacy"
match = { path_prefix = "/v2/models/legacy" }
backends = ["b"]
"#;

/// (route name, model) of the config's model routes.
const MODELS: [(&str, &str); 2] = [("fraud", "fraud"), ("cancer", "cancer-lr")];
/// (route name, prefix without its trailing `/`) of the prefix routes.
const PREFIXES: [(&str, &str); 4] = [
    ("api", "/api"),
    ("svc", "/api/svc"),
    ("svc-v2", "/api/svc/v2"),
    ("legacy", "/v2/models/legacy"),
];

static TABLE: OnceLock<RouteTable> = OnceLock::new();

fn table() -> RouteTable {
    let config = cascadia_config::parse(CONFIG).expect("the fixed config is valid");
    let registry = cascadia_backends::Registry::new();
    RouteTable::build(
        &config,
        &registry.build(&config),
        None,
        &RouteRuntimes::default(),
    )
}

fn segment_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(table);
    let path = cascadia_fuzz::utf8_prefix(data);

    let oip = path::parse(path);
    if let Some(p) = oip {
        assert_eq!(
            p.kind.is_model(),
            p.model.is_some(),
            "model set iff a model endpoint"
        );
        for segment in p.model.into_iter().chain(p.version) {
            assert!(
                !segment.is_empty()
                    && !segment.contains('/')
                    && !segment.contains('%')
                    && segment != "."
                    && segment != "..",
                "unsafe segment {segment:?} parsed from {path:?}"
            );
        }
        if p.version.is_some() {
            assert!(p.model.is_some());
        }
        let rebuilt = path::model_path(p.kind, p.model.unwrap_or(""), p.version);
        let without_query = path.split_once('?').map_or(path, |(before, _)| before);
        assert_eq!(
            rebuilt, without_query,
            "model_path does not rebuild the parsed path"
        );
        assert_eq!(path::parse(&rebuilt), Some(p));
    }

    // Any string as a model name (gRPC model names are arbitrary UTF-8).
    if let Some(route) = table.by_model(path) {
        assert_eq!(route.model.as_deref(), Some(path));
        assert!(MODELS
            .iter()
            .any(|(name, model)| *model == path && *name == &*route.name));
    }

    // The match phase, the proxy's own.
    let matched = match cascadia::proxy::match_request(table, path) {
        Err(_) => {
            // Refused: a path that could escape a prefix, or no route.
            let escapes = path.contains('%')
                || path.contains('\\')
                || path.split('/').any(|s| s == "." || s == "..");
            assert!(escapes || table.by_path(path).is_none(), "{path:?} refused");
            return;
        }
        Ok(cascadia::proxy::Matched::Health(kind)) => {
            assert!(matches!(kind, OipKind::ServerLive | OipKind::ServerReady));
            return;
        }
        Ok(cascadia::proxy::Matched::Route { route, oip }) => (route, oip),
    };
    if let (route, Some(p)) = matched {
        let model = p.model.expect("a model match has a model");
        assert_eq!(route.model.as_deref(), Some(model));
        assert!(
            MODELS
                .iter()
                .any(|(name, m)| *m == model && *name == &*route.name),
            "{path:?} matched route {:?}, which the config does not give model {model:?}",
            route.name
        );
        return;
    }
    let expected = PREFIXES
        .iter()
        .filter(|(_, prefix)| segment_prefix(path, prefix))
        .max_by_key(|(_, prefix)| prefix.len())
        .map(|(name, _)| *name);
    let matched = Some(&*matched.0.name);
    assert_eq!(
        matched, expected,
        "{path:?} matched {matched:?}, not the longest configured prefix {expected:?}"
    );
    if let Some(route) = table.by_path(path) {
        assert!(
            route.model.is_none(),
            "a prefix match returned a model route"
        );
    }
});
