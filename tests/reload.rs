//! Hot reload through the real gateway: admin API, file watch, SIGHUP,
//! invalid files, and reloads under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Method, StatusCode};

use crate::support::{CanaryFixture, GatewayProcess, TestClient, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_apply_at_once() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(90, 10)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (client, url, stop, sent, failures) = (
            client.clone(),
            url.clone(),
            stop.clone(),
            sent.clone(),
            failures.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("w{worker}-{i}");
                let result = client
                    .try_send(
                        Method::POST,
                        &url,
                        &[("content-type", "application/json"), ("x-user-id", &user)],
                        crate::support::INFER_BODY,
                    )
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(response) if response.status == StatusCode::OK => {}
                    Ok(response) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", response.status)),
                    Err(error) => failures.lock().unwrap().push(error),
                }
                i += 1;
            }
        }));
    }

    // Alternate the weights 100 times while the load runs; each reload must
    // apply, and the request right after it must see the new weights.
    for round in 0..100 {
        let (stable, canary) = if round % 2 == 0 { (0, 100) } else { (100, 0) };
        gateway.write_config(&fixture.config(stable, canary));
        let (status, body) = gateway.reload(&client).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "applied", "{body}");
        let expected = if canary == 100 { "canary" } else { "stable" };
        let response = client.infer(&url, &[("x-user-id", "probe")]).await;
        assert_eq!(
            response.header("x-cascadia-version"),
            Some(expected),
            "round {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(sent.load(Ordering::Relaxed) > 100, "load ran");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let config = gateway.admin_config(&client).await;
    assert_eq!(config["version"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_serving_and_reports_the_error() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();
    let before = gateway.admin_config(&client).await;

    // Weights that sum to 90: rejected whole.
    gateway.write_config(&fixture.config(90, 0));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["error"]["errors"][0]["path"], "routes[0].split");
    assert_eq!(
        body["error"]["errors"][0]["message"],
        "weights sum to 90, must sum to 100"
    );

    let after = gateway.admin_config(&client).await;
    assert_eq!(
        after["version"], before["version"],
        "the bad file was not applied"
    );
    assert_eq!(after["hash"], before["hash"]);
    assert_eq!(after["last_error"]["errors"][0]["path"], "routes[0].split");
    assert_eq!(after["reloads"]["rejected"], 1);

    // Still serving the last good config.
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-cascadia-version"), Some("stable"));

    // Broken TOML is rejected the same way.
    gateway.write_config("[[routes]\nname = ");
    let (status, _) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A good file clears the error.
    gateway.write_config(&fixture.config(0, 100));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let config = gateway.admin_config(&client).await;
    assert!(config["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_by_the_watch() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start_watching(&fixture.config(100, 0)).await;
    let client = TestClient::new();

    gateway.write_config(&fixture.config(0, 100));
    gateway
        .wait_for_config(&client, |c| c["version"] == 2)
        .await;
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.header("x-cascadia-version"), Some("canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let fixture = CanaryFixture::start().await;
    // No file watch: only the signal can trigger this reload.
    let gateway = GatewayProcess::start_with(&fixture.config(100, 0), &["--no-watch"]).await;
    let client = TestClient::new();

    gateway.write_config(&fixture.config(0, 100));
    let pid = gateway.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let config = gateway
        .wait_for_config(&client, |c| c["version"] == 2)
        .await;
    assert!(config["last_error"].is_null());
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.header("x-cascadia-version"), Some("canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_is_post_only() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();
    let response = client
        .get(&gateway.admin_url("/admin/config/reload"), &[])
        .await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(gateway.admin_config(&client).await["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_need_the_bearer_token_when_one_is_configured() {
    let fixture = CanaryFixture::start().await;
    let config = fixture.config(100, 0).replacen(
        "[gateway.limits]",
        "[gateway.admin]\ntoken_file = \"admin.token\"\n\n[gateway.limits]",
        1,
    );
    let token = "s3cret-admin-token-0123456789";
    let gateway =
        GatewayProcess::start_with_files(&config, &[("admin.token", &format!("{token}\n"))]).await;
    let client = TestClient::new();
    let url = gateway.admin_url("/admin/config/reload");

    let missing = client.send(Method::POST, &url, &[], "").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = client
        .send(
            Method::POST,
            &url,
            &[("authorization", "Bearer s3cret-admin-token-0123456788")],
            "",
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let drain = gateway
        .admin_post(&client, "/admin/regions/us-east/drain")
        .await;
    assert_eq!(
        drain.status,
        StatusCode::UNAUTHORIZED,
        "drains need the token too"
    );

    let bearer = format!("Bearer {token}");
    let right = client
        .send(
            Method::POST,
            &url,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(right.status, StatusCode::OK);
    // Reads need the token too: the admin API shows endpoint addresses.
    let read = client.get(&gateway.admin_url("/admin/backends"), &[]).await;
    assert_eq!(read.status, StatusCode::UNAUTHORIZED);
    let read = client
        .get(
            &gateway.admin_url("/admin/config"),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(read.json()["version"], 1);
    // A cross-site form post carries no JSON type: refused even with the
    // token (a browser could hold it in no header, but the rule is one).
    let form = client
        .send(
            Method::POST,
            &url,
            &[
                ("authorization", &bearer),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "a=b",
        )
        .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A rotated token file is a changed config: the reload applies it,
    // though the config file itself did not change.
    let reload_with = |token: &str| {
        let (client, url, bearer) = (client.clone(), url.clone(), format!("Bearer {token}"));
        async move {
            client
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("authorization", bearer.as_str()),
                        ("content-type", "application/json"),
                    ],
                    "",
                )
                .await
        }
    };
    let rotated = "r0tated-admin-token-0123456789";
    gateway.write_file("admin.token", &format!("{rotated}\n"));
    let applied = reload_with(token).await;
    assert_eq!(applied.status, StatusCode::OK);
    assert_eq!(applied.json()["status"], "applied", "{:?}", applied.json());
    let old = reload_with(token).await;
    assert_eq!(
        old.status,
        StatusCode::UNAUTHORIZED,
        "the old token is gone"
    );
    assert_eq!(reload_with(rotated).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_cut_short_file_over_the_live_one_is_rejected() {
    let fixture = CanaryFixture::start().await;
    let good = fixture.config(100, 0);
    let gateway = GatewayProcess::start_watching(&good).await;
    let client = TestClient::new();
    let before = gateway.admin_config(&client).await;
    // `> gateway.toml`, then a write cut off before the first route: both
    // valid TOML, neither a config anyone meant.
    let cut = &good[..good.find("[[routes]]").expect("the fixture has routes")];
    for text in ["", cut] {
        gateway.write_config(text);
        let (status, body) = gateway.reload(&client).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["errors"][0]["path"], "routes", "{body}");
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "the last good config serves"
        );
    }
    let after = gateway.admin_config(&client).await;
    assert_eq!(after["version"], before["version"]);
    // Serving nothing is possible when the file says so.
    gateway.write_config("[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nallow_no_routes = true\n");
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_oversized_model_is_refused_and_later_reloads_still_work() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();
    let cascade = |model: &str| {
        format!(
            "{}\n[[routes]]\nname = \"screen\"\nmatch = {{ model = \"screen\" }}\nbackends = [\"fraud-v1\"]\n\n[routes.cascade]\nmodel = \"{model}\"\naccept_below = 0.1\nreject_above = 0.9\n",
            fixture.config(100, 0)
        )
    };
    // A FIFO blocks whoever opens it until a writer comes: never opened.
    let fifo = gateway.config_path.with_file_name("model.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    gateway.write_config(&cascade("model.fifo"));
    let (status, body) = tokio::time::timeout(WAIT, gateway.reload(&client))
        .await
        .expect("a FIFO does not wedge the reload");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["errors"][0]["path"],
        "routes[2].cascade.model"
    );
    assert!(
        body["error"]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{body}"
    );
    // 17 MiB of model: over the cap, refused before it is parsed.
    gateway.write_file("huge.json", &" ".repeat(17 * 1024 * 1024));
    gateway.write_config(&cascade("huge.json"));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit"),
        "{body}"
    );
    // And the reloader still works.
    gateway.write_config(&fixture.config(0, 100));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_cross_site_posts_foreign_hosts_and_wild_numbers() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();
    let drain = gateway.admin_url("/admin/regions/us-east/drain");
    // What a page on another site can send without a preflight: a form, a
    // text/plain body, or no body at all.
    for headers in [
        &[("content-type", "application/x-www-form-urlencoded")][..],
        &[("content-type", "text/plain")],
        &[],
    ] {
        let response = client.send(Method::POST, &drain, headers, "").await;
        assert_eq!(
            response.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{headers:?}"
        );
    }
    let regions = client
        .get(&gateway.admin_url("/admin/regions"), &[])
        .await
        .json();
    assert!(
        regions.to_string().contains("\"drained\":false"),
        "nothing was drained: {regions}"
    );
    // DNS rebinding: a page's own name pointed at 127.0.0.1.
    let rebound = client
        .get(
            &gateway.admin_url("/admin/backends"),
            &[("host", "evil.example:9901")],
        )
        .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    for host in ["localhost:9901", "127.0.0.1", "[::1]:9901"] {
        let ok = client
            .get(&gateway.admin_url("/admin/backends"), &[("host", host)])
            .await;
        assert_eq!(ok.status, StatusCode::OK, "{host}");
    }
    // A number that would overflow a Duration is a 400, not a panic.
    for body in [
        r#"{"region":"us-east","fault":"blackhole","duration_s":1,"abort_p99_ms":1e300}"#,
        r#"{"region":"us-east","fault":"latency","duration_s":1,"latency_ms":18446744073709551615}"#,
    ] {
        let response = client
            .send(
                Method::POST,
                &gateway.admin_url("/admin/drills"),
                crate::support::JSON,
                body,
            )
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(
        gateway.admin_config(&client).await["version"],
        1,
        "still up"
    );
}

#[test]
fn an_admin_api_open_to_other_hosts_needs_a_token() {
    let text = "[gateway]\nadmin_listen = \"0.0.0.0:0\"\nallow_no_routes = true\n";
    let errors = cascadia_config::parse(text).unwrap_err();
    assert_eq!(errors.0[0].path, "gateway.admin_listen", "{errors}");
    let insecure = format!("{text}[gateway.admin]\ninsecure = true\n");
    assert!(cascadia_config::parse(&insecure).is_ok());
}
