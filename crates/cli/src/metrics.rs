//! `--metrics-addr`: a node's Prometheus metrics (`/metrics`) and health (`/healthz`) over HTTP.
//!
//! The figures are `templar_node::metrics::Metrics`, fed by the node's events; this serves them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use templar_node::metrics::Metrics;
use templar_node::node::now_ms;

pub type SharedMetrics = Arc<Mutex<Metrics>>;

/// Binds `addr` and answers scrapes from a thread of its own until the process ends: the node's
/// thread spends minutes in training steps and collectives, and a stalled node must still say
/// so. Returns the bound address (port 0 picks a free one).
pub fn serve(addr: SocketAddr, metrics: SharedMetrics) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("serving metrics on {addr} (--metrics-addr)"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept(listener, metrics)))
        .context("starting the metrics thread")?;
    tracing::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    Ok(bound)
}

async fn accept(listener: std::net::TcpListener, metrics: SharedMetrics) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "the metrics listener");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&request, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a metrics connection ended");
            }
        });
    }
}

fn answer<B>(request: &Request<B>, metrics: &SharedMetrics) -> Response<Full<Bytes>> {
    let now = now_ms();
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            lock(metrics).render(now),
        ),
        (&Method::GET, "/healthz") => {
            let health = lock(metrics).health(now);
            let status = if health.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let verdict = if health.healthy { "ok" } else { "stalled" };
            (
                status,
                "text/plain; charset=utf-8",
                format!("{verdict}: {}\n", health.detail),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The metrics, even if a thread panicked while holding them (they are counters, still usable).
pub fn lock(metrics: &SharedMetrics) -> std::sync::MutexGuard<'_, Metrics> {
    metrics
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
