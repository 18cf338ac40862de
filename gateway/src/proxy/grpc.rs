//! gRPC requests for `inference.GRPCInferenceService`: routed by the
//! `model_name` field of the protobuf request, which means the (unary)
//! request message is buffered before the upstream is chosen.

use cascadia_oip::grpc as oip_grpc;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response};
use prost::Message;

use super::{admit, Proxy};
use crate::core::body::{DownstreamBody, ResponseBody};
use crate::core::errors::GatewayError;
use crate::core::{body, coding, headers};
use crate::routing::choose_target;
use crate::snapshot::Snapshot;

/// True for gRPC requests (any `application/grpc*` content type).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    headers::is_grpc(request.headers())
}

/// Handles one gRPC call.
pub async fn handle(
    proxy: &Proxy,
    snapshot: &std::sync::Arc<Snapshot>,
    request: Request<DownstreamBody>,
    request_id: &HeaderValue,
    matched: &mut Option<std::sync::Arc<crate::routing::Route>>,
) -> Result<Response<ResponseBody>, GatewayError> {
    admit(snapshot, &request)?;
    let method = request
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(oip_grpc::SERVICE))
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| GatewayError::Unimplemented(request.uri().path().to_owned()))?
        .to_owned();
    match method.as_str() {
        "ServerLive" => {
            return Ok(local_reply(
                oip_grpc::ServerLiveResponse { live: true },
                request_id,
            ))
        }
        "ServerReady" => {
            return Ok(local_reply(
                oip_grpc::ServerReadyResponse {
                    ready: !crate::core::lifecycle::is_draining(),
                },
                request_id,
            ))
        }
        "ModelInfer" | "ModelReady" | "ModelMetadata" => {}
        _ => return Err(GatewayError::Unimplemented(method)),
    }

    // Phase: match. Unary calls are small and the model name is inside the
    // message, so the one message is buffered (within the body limit).
    let limit = snapshot.config.gateway.limits.max_body_bytes;
    let (mut parts, incoming) = request.into_parts();
    let mut body = crate::core::body::read_limited(
        incoming,
        limit,
        body::BodyTimeouts::of(&snapshot.config.gateway.limits),
        &snapshot.runtimes.buffers,
    )
    .await?;
    let malformed = |_| GatewayError::BadRequest("malformed gRPC frame");
    let (compressed, message) = oip_grpc::decode_frame(&body).map_err(malformed)?;
    if compressed {
        // The model name is inside the message: a compressed one (a
        // client's `grpc-encoding: gzip`) is decoded, within the body
        // limit, and goes on uncompressed.
        let coding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned();
        let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
        let decoded = coding::decode(&coding, message, limit_bytes)
            .map_err(|error| coding::request_error(&error, limit))?;
        body = snapshot
            .runtimes
            .buffers
            .account(oip_grpc::encode_frame(&decoded))?;
        parts.headers.remove("grpc-encoding");
    }
    let (_, message) = oip_grpc::decode_frame(&body).map_err(malformed)?;
    let (model, _version) = oip_grpc::peek_model(message)
        .map_err(|_| GatewayError::BadRequest("malformed gRPC message"))?;
    let model = model.ok_or(GatewayError::BadRequest("model_name is required"))?;
    let route = snapshot
        .routes
        .by_model(&model)
        .ok_or(GatewayError::NoRoute)?;

    *matched = Some(std::sync::Arc::clone(route));
    let client = proxy.client_address(snapshot, &parts.headers);
    let admitted = super::admit_to_route(route, &parts.headers, client).await?;

    // Phase: stage 1, for cascade routes' inference calls.
    if let Some(stage) = &route.cascade {
        if method == "ModelInfer" {
            let route = std::sync::Arc::clone(route);
            let cx = crate::cascade::Stage1 {
                upstream: proxy.upstream(),
                downstream: proxy.downstream(snapshot),
                snapshot,
                route: &route,
                stage,
                request_id,
            };
            return crate::cascade::handle_grpc(cx, parts, message).await;
        }
    }

    // Phase: split.
    let target = choose_target(route, &parts.headers)?;

    // Shadow traffic: the candidate gets the message under its own model
    // name and version, once the primary has answered.
    let mirror = match &route.shadow {
        Some(shadow) if method == "ModelInfer" => {
            let shadow_body = if shadow.target.upstream_model.is_some()
                || shadow.target.upstream_version.is_some()
            {
                oip_grpc::rewrite_model(
                    message,
                    shadow.target.upstream_model.as_deref(),
                    shadow.target.upstream_version.as_deref(),
                )
                .ok()
                .map(|m| oip_grpc::encode_frame(&m))
            } else {
                Some(body.clone())
            };
            let load = route.admission.as_ref().map(|a| a.load());
            shadow_body
                .and_then(|b| crate::shadow::Mirror::prepare_grpc(shadow, load, &parts.headers, &b))
        }
        _ => None,
    };

    // Rewrite the message only when the target names the model differently.
    let body = if target.upstream_model.is_some() || target.upstream_version.is_some() {
        let rewritten = oip_grpc::rewrite_model(
            message,
            target.upstream_model.as_deref(),
            target.upstream_version.as_deref(),
        )
        .map_err(|_| GatewayError::BadRequest("malformed gRPC message"))?;
        oip_grpc::encode_frame(&rewritten)
    } else {
        body
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = parts;
    // The buffered body may have changed size.
    parts.headers.remove(header::CONTENT_LENGTH);
    let started = tokio::time::Instant::now();
    let exchange = crate::forward::Exchange {
        route,
        target,
        parts,
        path_and_query: path_and_query.clone(),
        body: crate::forward::RequestBody::Buffered(body),
        request_id,
    };
    let mut response =
        crate::forward::forward(&**proxy.upstream(), proxy.downstream(snapshot), exchange).await?;
    if let Some(mirror) = mirror {
        // A failed call can still be HTTP 200 (its status is in the
        // trailers); the comparison then finds no answer to compare.
        if response.status().is_success() {
            let primary = response.body_mut().capture(crate::shadow::COMPARE_LIMIT);
            mirror.send(
                path_and_query,
                std::sync::Arc::clone(&target.version),
                started.elapsed(),
                primary,
            );
        }
    }
    response.body_mut().hold(admitted);
    Ok(response)
}

/// A successful unary reply the gateway gives itself.
fn local_reply<M: Message>(message: M, request_id: &HeaderValue) -> Response<ResponseBody> {
    let frame = oip_grpc::encode_frame(&message.encode_to_vec());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(ResponseBody::with_trailers(frame, trailers));
    let map = response.headers_mut();
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    map.insert(headers::X_REQUEST_ID, request_id.clone());
    response
}
