//! Classify an OIP REST path (`/v2/models/{name}[/versions/{v}]/infer`, ...) without allocating.
//!
//! The router needs the model name before it picks a backend, and it may forward to an
//! upstream that knows the model under another name, so [`model_path`] rebuilds the path.
//!
//! Segments are checked strictly: empty segments, `.`/`..` and anything containing `%` are
//! refused, so neither `//`, dot-segments nor percent-encoded traversal (`%2e%2e`, `%2f`) can
//! make the path we forward differ from the path we routed on.

/// Which OIP endpoint a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OipKind {
    /// `GET /v2/health/live`
    ServerLive,
    /// `GET /v2/health/ready`
    ServerReady,
    /// `GET /v2`
    ServerMetadata,
    /// `GET /v2/models/{m}[/versions/{v}]`
    ModelMetadata,
    /// `GET /v2/models/{m}[/versions/{v}]/ready`
    ModelReady,
    /// `POST /v2/models/{m}[/versions/{v}]/infer`
    ModelInfer,
}

impl OipKind {
    /// True for the endpoints that name a model (and so carry `model`).
    pub fn is_model(self) -> bool {
        matches!(
            self,
            OipKind::ModelMetadata | OipKind::ModelReady | OipKind::ModelInfer
        )
    }
}

/// A parsed OIP path; `model` and `version` borrow from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OipPath<'a> {
    pub kind: OipKind,
    /// Set for the model endpoints, `None` for the server endpoints.
    pub model: Option<&'a str>,
    /// Set only when the path has a `/versions/{v}` part.
    pub version: Option<&'a str>,
}

/// Parses an OIP REST path. Returns `None` for anything that is not exactly one of the OIP
/// endpoints (including trailing slashes and unsafe segments). A `?query` suffix is ignored.
pub fn parse(path: &str) -> Option<OipPath<'_>> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() {
        return Some(OipPath {
            kind: OipKind::ServerMetadata,
            model: None,
            version: None,
        });
    }
    let rest = rest.strip_prefix('/')?;
    // At most 6 segments after `/v2`: models/{m}/versions/{v}/infer.
    let mut segs = [""; 6];
    let mut n = 0;
    for seg in rest.split('/') {
        if n == segs.len() {
            return None;
        }
        segs[n] = seg;
        n += 1;
    }
    let segs = &segs[..n];
    let server = |kind| {
        Some(OipPath {
            kind,
            model: None,
            version: None,
        })
    };
    let (kind, m, v) = match segs {
        ["health", "live"] => return server(OipKind::ServerLive),
        ["health", "ready"] => return server(OipKind::ServerReady),
        ["models", m] => (OipKind::ModelMetadata, *m, None),
        ["models", m, "ready"] => (OipKind::ModelReady, *m, None),
        ["models", m, "infer"] => (OipKind::ModelInfer, *m, None),
        ["models", m, "versions", v] => (OipKind::ModelMetadata, *m, Some(*v)),
        ["models", m, "versions", v, "ready"] => (OipKind::ModelReady, *m, Some(*v)),
        ["models", m, "versions", v, "infer"] => (OipKind::ModelInfer, *m, Some(*v)),
        _ => return None,
    };
    if !safe_segment(m) || !v.is_none_or(safe_segment) {
        return None;
    }
    Some(OipPath {
        kind,
        model: Some(m),
        version: v,
    })
}

/// A model or version segment we are willing to route on and forward verbatim.
fn safe_segment(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('%')
}

/// Rebuilds the path for `kind`. `model` and `version` are ignored for the server endpoints;
/// they are inserted as given, so pass names that [`parse`] would accept.
pub fn model_path(kind: OipKind, model: &str, version: Option<&str>) -> String {
    let suffix = match kind {
        OipKind::ServerLive => return "/v2/health/live".to_owned(),
        OipKind::ServerReady => return "/v2/health/ready".to_owned(),
        OipKind::ServerMetadata => return "/v2".to_owned(),
        OipKind::ModelMetadata => "",
        OipKind::ModelReady => "/ready",
        OipKind::ModelInfer => "/infer",
    };
    let mut out = String::with_capacity(
        "/v2/models/".len() + model.len() + version.map_or(0, |v| v.len() + 10) + suffix.len(),
    );
    out.push_str("/v2/models/");
    out.push_str(model);
    if let Some(v) = version {
        out.push_str("/versions/");
        out.push_str(v);
    }
    out.push_str(suffix);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        kind: OipKind,
        model: Option<&'static str>,
        version: Option<&'static str>,
    ) -> OipPath<'static> {
        OipPath {
            kind,
            model,
            version,
        }
    }

    #[test]
    fn server_endpoints() {
        assert_eq!(parse("/v2"), Some(p(OipKind::ServerMetadata, None, None)));
        assert_eq!(
            parse("/v2/health/live"),
            Some(p(OipKind::ServerLive, None, None))
        );
        assert_eq!(
            parse("/v2/health/ready"),
            Some(p(OipKind::ServerReady, None, None))
        );
    }

    #[test]
    fn model_endpoints_with_and_without_version() {
        use OipKind::*;
        assert_eq!(
            parse("/v2/models/fraud"),
            Some(p(ModelMetadata, Some("fraud"), None))
        );
        assert_eq!(
            parse("/v2/models/fraud/ready"),
            Some(p(ModelReady, Some("fraud"), None))
        );
        assert_eq!(
            parse("/v2/models/fraud/infer"),
            Some(p(ModelInfer, Some("fraud"), None))
        );
        assert_eq!(
            parse("/v2/models/fraud/versions/3"),
            Some(p(ModelMetadata, Some("fraud"), Some("3")))
        );
        assert_eq!(
            parse("/v2/models/fraud/versions/3/ready"),
            Some(p(ModelReady, Some("fraud"), Some("3")))
        );
        assert_eq!(
            parse("/v2/models/fraud/versions/3/infer"),
            Some(p(ModelInfer, Some("fraud"), Some("3")))
        );
    }

    #[test]
    fn query_string_is_ignored() {
        assert_eq!(
            parse("/v2/models/fraud/infer?x=1/../.."),
            Some(p(OipKind::ModelInfer, Some("fraud"), None))
        );
    }

    #[test]
    fn rejects_unsafe_or_unknown_paths() {
        for bad in [
            "",
            "/",
            "/v2/",
            "/v3/models/fraud/infer",
            "/v2x",
            "/v2/models",
            "/v2/models/",
            "/v2/models//infer",
            "/v2/models/fraud/",
            "/v2/models/fraud/infer/",
            "/v2/models/./infer",
            "/v2/models/../infer",
            "/v2/models/%2e%2e/infer",
            "/v2/models/a%2fb/infer",
            "/v2/models/fraud/versions/../infer",
            "/v2/models/fraud/versions/%2e/infer",
            "/v2/models/fraud/versions//infer",
            "/v2/models/fraud/versions",
            "/v2/models/fraud/versions/1/infer/extra",
            "/v2/models/fraud/predict",
            "/v2/health",
            "/v2/health/live/x",
            "v2/models/fraud/infer",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn model_named_like_a_keyword_is_still_a_model() {
        assert_eq!(
            parse("/v2/models/versions/infer"),
            Some(p(OipKind::ModelInfer, Some("versions"), None))
        );
    }

    #[test]
    fn model_path_round_trips() {
        for path in [
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/fraud",
            "/v2/models/fraud/ready",
            "/v2/models/fraud/infer",
            "/v2/models/fraud/versions/7",
            "/v2/models/fraud/versions/7/ready",
            "/v2/models/fraud/versions/7/infer",
        ] {
            let parsed = parse(path).unwrap();
            let rebuilt = model_path(parsed.kind, parsed.model.unwrap_or(""), parsed.version);
            assert_eq!(rebuilt, path);
        }
        assert_eq!(
            model_path(OipKind::ModelInfer, "fraud-v2", Some("1")),
            "/v2/models/fraud-v2/versions/1/infer"
        );
    }
}
