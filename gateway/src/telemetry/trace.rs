//! OpenTelemetry traces: spans for a request's phases, exported over
//! OTLP/gRPC, and W3C `traceparent` propagation to the backends.
//!
//! Off unless `gateway.tracing` is configured. Off means no tracer is
//! installed, and every helper here then costs one atomic load: no span,
//! no context, no header work. A client's own `traceparent` still reaches
//! the backend untouched, as any other end-to-end header does.
//!
//! # Spans
//! - `cascadia.request` (server): the whole request, parented on the
//!   client's `traceparent` when it sends one.
//! - `cascadia.admission`: rate limits and load shedding.
//! - `cascadia.stage1`: the cascade's local model.
//! - `cascadia.features.{l1,redis,store}`: the feature lookup, one span per
//!   tier that was asked.
//! - `cascadia.upstream` (client): one per attempt, hedges included; its
//!   context is what the backend receives in `traceparent`.
//!
//! # Export
//! Spans are batched off the request path and exported from a dedicated
//! one-thread Tokio runtime. The SDK's batch processor runs the exporter on
//! its own OS thread, where tonic finds no reactor; running the export on
//! a runtime of our own fixes that, and keeps export work off the data
//! plane's workers. A full queue drops spans rather than slowing requests.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cascadia_config::TracingSettings;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;

/// The installed tracer; unset while tracing is off.
static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// How long a batch may wait before it is sent: short enough that a trace
/// shows up while the operator is still looking at the request.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// Bound on one export call; a dead collector must not pile up batches.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans buffered for export; beyond this they are dropped.
const QUEUE_SPANS: usize = 8192;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("cannot start the trace export runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("tracing is already set up in this process")]
    AlreadyInstalled,
}

/// Installs the OTLP tracer for this process. Later calls fail: the
/// settings are read once, at start-up.
pub fn install(settings: &TracingSettings) -> Result<(), TracingError> {
    if TRACING.get().is_some() {
        return Err(TracingError::AlreadyInstalled);
    }
    let exporter = RuntimeExporter::new(settings)?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(EXPORT_DELAY)
        .with_max_queue_size(QUEUE_SPANS)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        // A sampled caller is always recorded, an unsampled one never: the
        // ratio applies to traces that start here.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("cascadia");
    TRACING
        .set(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
        .map_err(|_| TracingError::AlreadyInstalled)
}

/// Sends the spans still queued and stops the exporter. Blocks: call it
/// from a blocking thread, after the listeners have drained.
pub fn shutdown() {
    if let Some(tracing) = TRACING.get() {
        if let Err(error) = tracing.provider.shutdown() {
            tracing::warn!(%error, "trace export did not finish cleanly");
        }
    }
}

/// Whether a tracer is installed.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// A span that ends when dropped, or nothing when tracing is off or the
/// request is not being traced. Every method is a no-op on nothing.
#[derive(Debug, Default)]
#[must_use = "the span ends when this is dropped"]
pub struct SpanGuard(Option<Context>);

impl SpanGuard {
    /// Whether there is a span: callers check it before building an
    /// attribute value that allocates, so tracing off costs nothing.
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// Records an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with a message for the trace viewer.
    pub fn fail(&self, message: &'static str) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message));
        }
    }

    /// Runs `future` with this span as the parent of the spans it starts.
    /// Not an `async fn`: that would be one more state machine holding
    /// `future` (several KB for a request), moved at each layer; this
    /// returns the future itself when there is no span.
    pub fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        use opentelemetry::context::FutureExt as _;
        match &self.0 {
            Some(cx) => futures_util::future::Either::Left(future.with_context(cx.clone())),
            None => futures_util::future::Either::Right(future),
        }
    }

    /// Writes this span's `traceparent` (and `tracestate`) into `headers`,
    /// so the next hop joins the trace.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let (Some(cx), Some(tracing)) = (&self.0, TRACING.get()) {
            tracing
                .propagator
                .inject_context(cx, &mut HeaderInjector(headers));
        }
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// The root span of a downstream request, a child of the client's
/// `traceparent` when there is one.
pub fn request_span(headers: &HeaderMap, method: &http::Method, path: &str) -> SpanGuard {
    let Some(tracing) = TRACING.get() else {
        return SpanGuard(None);
    };
    let parent = tracing.propagator.extract(&HeaderExtractor(headers));
    let span = tracing
        .tracer
        .span_builder("cascadia.request")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("url.path", path.to_owned()),
        ])
        .start_with_context(&tracing.tracer, &parent);
    SpanGuard(Some(parent.with_span(span)))
}

/// A child of the current span (set by [`SpanGuard::scope`]); nothing when
/// no request span is current.
pub fn child(name: &'static str) -> SpanGuard {
    child_of_kind(name, SpanKind::Internal)
}

/// A client span for one upstream attempt.
pub fn upstream_span() -> SpanGuard {
    child_of_kind("cascadia.upstream", SpanKind::Client)
}

fn child_of_kind(name: &'static str, kind: SpanKind) -> SpanGuard {
    let Some(tracing) = TRACING.get() else {
        return SpanGuard(None);
    };
    let parent = Context::current();
    if !parent.has_active_span() {
        return SpanGuard(None);
    }
    let span = tracing
        .tracer
        .span_builder(name)
        .with_kind(kind)
        .start_with_context(&tracing.tracer, &parent);
    SpanGuard(Some(parent.with_span(span)))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The OTLP/gRPC exporter, run on a one-thread runtime of its own (see the
/// module docs for why).
#[derive(Debug)]
struct RuntimeExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RuntimeExporter {
    fn new(settings: &TracingSettings) -> Result<Self, TracingError> {
        let endpoint = settings.otlp_endpoint.as_str();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cascadia-otlp")
            .enable_all()
            .build()?;
        // tonic sets up its channel on the current runtime.
        let built = {
            let _entered = runtime.enter();
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT);
            if endpoint.starts_with("https://") {
                use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
                let tls = ClientTlsConfig::new();
                let tls = match &settings.tls_ca_pem {
                    Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                    None => tls.with_native_roots(),
                };
                builder.with_tls_config(tls).build()
            } else {
                builder.build()
            }
        };
        let inner = match built {
            Ok(inner) => inner,
            Err(error) => {
                // Dropping a runtime blocks, which panics inside the
                // gateway's own: let it go in the background instead.
                runtime.shutdown_background();
                return Err(error.into());
            }
        };
        Ok(Self {
            inner: Arc::new(inner),
            runtime: Some(runtime),
        })
    }
}

impl SpanExporter for RuntimeExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let task = self
            .runtime
            .as_ref()
            .map(|rt| rt.spawn(async move { inner.export(batch).await }));
        async move {
            match task {
                Some(task) => task
                    .await
                    .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?,
                None => Err(OTelSdkError::AlreadyShutdown),
            }
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export shares
        // the exporter.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

impl Drop for RuntimeExporter {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime;
        // this one has nothing left that needs waiting for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
