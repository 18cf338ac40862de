//! The admin API's OpenAPI description (`/admin/openapi.json`) against the
//! answers of a real gateway: `cascadia demo`, which has every feature an
//! endpoint reports on (a canary split, a cascade, a shadow, a drill), plus
//! a rollout plan added through its config.
//!
//! The checker understands the part of JSON Schema the description uses:
//! `$ref`, `oneOf`, `type` (one or a list), `enum`, `properties`,
//! `required`, `additionalProperties: false` and `items`. Objects are
//! closed, so a field the API adds without documenting it fails here.

use http::{Method, StatusCode};
use serde_json::Value;

use crate::support::{DemoProcess, TestClient, JSON};

/// Where `value` breaks `schema`, as JSON-pointer-ish paths and reasons.
fn violations(schema: &Value, value: &Value, root: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        let target = &root["components"]["schemas"][name];
        assert!(!target.is_null(), "dangling $ref {reference}");
        return violations(target, value, root, at, out);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options
            .iter()
            .filter(|option| {
                let mut found = Vec::new();
                violations(option, value, root, at, &mut found);
                found.is_empty()
            })
            .count();
        if fits != 1 {
            out.push(format!(
                "{at}: fits {fits} of oneOf, not exactly one: {value}"
            ));
        }
        return;
    }
    let type_of = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let actual = type_of(value);
    // An integer is a number too.
    let type_ok = allowed.is_empty()
        || allowed.contains(&actual)
        || (actual == "integer" && allowed.contains(&"number"));
    if !type_ok {
        out.push(format!("{at}: is {actual}, documented as {allowed:?}"));
        return;
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            out.push(format!("{at}: {value} is not one of {values:?}"));
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if !fields.contains_key(name) {
                    out.push(format!("{at}: missing required {name:?}"));
                }
            }
            for (name, field) in fields {
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => {
                        violations(field_schema, field, root, &format!("{at}/{name}"), out)
                    }
                    None if schema["additionalProperties"] == false => {
                        out.push(format!("{at}: {name:?} is not documented"))
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                violations(&schema["items"], item, root, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Checks one real answer against the description of `method path`.
/// Checks a `GET` answer of another test's gateway against the description
/// (for views the demo does not have, e.g. a cascade's online watch).
pub fn check_get(path: &str, body: &Value) {
    let doc: Value = serde_json::from_str(include_str!("../gateway/openapi/admin.json"))
        .expect("the OpenAPI description is JSON");
    check(&doc, path, "get", StatusCode::OK, body);
}

fn check(doc: &Value, path: &str, method: &str, status: StatusCode, body: &Value) {
    let operation = &doc["paths"][path][method];
    assert!(!operation.is_null(), "{method} {path} is not described");
    let response = &operation["responses"][status.as_str()];
    assert!(
        !response.is_null(),
        "{method} {path} answered {status}, which is not described"
    );
    let schema = &response["content"]["application/json"]["schema"];
    let mut found = Vec::new();
    violations(schema, body, doc, "", &mut found);
    assert!(
        found.is_empty(),
        "{method} {path} ({status}) does not match its description:\n{}\n{body}",
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_answer_matches_the_openapi_description() {
    let demo = DemoProcess::start().await;
    let admin = format!(
        "http://{}",
        demo.after("cascadia admin listening on http://")
            .expect("admin address")
    );
    let config = demo
        .after("config   ")
        .and_then(|l| l.split_whitespace().next())
        .map(std::path::PathBuf::from)
        .expect("config path");
    let client = TestClient::new();

    let described = client
        .get(&format!("{admin}/admin/openapi.json"), &[])
        .await;
    assert_eq!(described.status, StatusCode::OK);
    let doc = described.json();
    let published: Value =
        serde_json::from_str(include_str!("../gateway/openapi/admin.json")).unwrap();
    assert_eq!(doc, published);
    assert_eq!(doc["openapi"], "3.1.0");

    // A rollout plan, so its status has an entry, added the way an
    // operator would: a config edit and a reload.
    let text = std::fs::read_to_string(&config).unwrap();
    let plan = "[routes.rollout]\ncanary = \"canary\"\nsteps = [10, 100]\nmin_dwell = \"1h\"\n\n[routes.shadow]";
    std::fs::write(&config, text.replacen("[routes.shadow]", plan, 1)).unwrap();
    let reload = client
        .send(
            Method::POST,
            &format!("{admin}/admin/config/reload"),
            JSON,
            "",
        )
        .await;
    check(
        &doc,
        "/admin/config/reload",
        "post",
        reload.status,
        &reload.json(),
    );
    // The rollout task takes the new plan up at its next tick.
    tokio::time::timeout(crate::support::WAIT, async {
        loop {
            let status = client
                .get(&format!("{admin}/admin/rollouts"), &[])
                .await
                .json();
            if status["rollouts"].as_array().is_some_and(|r| !r.is_empty()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the plan is running");
    let paused = client
        .send(
            Method::POST,
            &format!("{admin}/admin/rollouts/fraud/pause"),
            JSON,
            "",
        )
        .await;
    // The demo's own rollout already rolled this plan back (its state is
    // kept beside the config), so a pause is refused: a described 409.
    check(
        &doc,
        "/admin/rollouts/{route}/{action}",
        "post",
        paused.status,
        &paused.json(),
    );

    for (path, url) in [
        ("/admin/config", "/admin/config"),
        ("/admin/backends", "/admin/backends"),
        ("/admin/regions", "/admin/regions"),
        ("/admin/drills", "/admin/drills"),
        ("/admin/drills/{id}", "/admin/drills/1"),
        ("/admin/drills/{id}", "/admin/drills/999"),
        ("/admin/cascade", "/admin/cascade"),
        ("/admin/shadow", "/admin/shadow"),
        ("/admin/rollouts", "/admin/rollouts"),
    ] {
        let answer = client.get(&format!("{admin}{url}"), &[]).await;
        let body = answer.json();
        check(&doc, path, "get", answer.status, &body);
        // Every list the demo fills has entries, so item schemas are used.
        if let Some(list) = body
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_array)
        {
            assert!(!list.is_empty(), "{url} listed nothing: {body}");
        }
    }
    let refused = client
        .send(
            Method::POST,
            &format!("{admin}/admin/drills"),
            JSON,
            r#"{"fault": "nonsense"}"#,
        )
        .await;
    check(
        &doc,
        "/admin/drills",
        "post",
        refused.status,
        &refused.json(),
    );
    drop(demo);
}

#[test]
fn the_checker_catches_undocumented_fields_wrong_types_and_missing_ones() {
    let doc: Value = serde_json::from_str(include_str!("../gateway/openapi/admin.json")).unwrap();
    let schema = serde_json::json!({"$ref": "#/components/schemas/Config"});
    let good = serde_json::json!({
        "version": 1, "hash": "ab", "source": "c.toml", "loaded_at_unix": 5,
        "reloads": {"applied": 0, "rejected": 0}, "last_error": null,
        "effective": ["listen 127.0.0.1:8080  admin 127.0.0.1:9901"]
    });
    let mut found = Vec::new();
    violations(&schema, &good, &doc, "", &mut found);
    assert_eq!(found, Vec::<String>::new());
    let mut bad = good.clone();
    bad["surprise"] = serde_json::json!(1);
    bad["version"] = serde_json::json!("1");
    bad.as_object_mut().unwrap().remove("hash");
    let mut found = Vec::new();
    violations(&schema, &bad, &doc, "", &mut found);
    assert_eq!(found.len(), 3, "{found:?}");
}
