//! `--metrics-listen ADDR`: the metrics of [`browserver_runtime::metrics`] in the Prometheus
//! text format at `GET /metrics`, on a listener of their own (keep it off the public
//! internet: it names no client, but it is not meant for visitors).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The duration histogram's buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's metrics recorder (once per process) and registers every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(browserver_runtime::metrics::PROXIED_DURATION.to_string()),
            &DURATION_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    browserver_runtime::metrics::enable();
    Ok(handle)
}

/// Connections the metrics listener serves at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` for ever (other paths: 404): at most
/// 16 at once, each for at most a minute, a request head within 10 s.
pub async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let handle = handle.clone();
                async move {
                    let mut response = if req.uri().path() == "/metrics" {
                        handle.run_upkeep();
                        let mut r = http::Response::new(Full::new(Bytes::from(handle.render())));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        r
                    } else {
                        http::Response::new(Full::new(Bytes::from_static(
                            b"Not found: GET /metrics\n",
                        )))
                    };
                    if req.uri().path() != "/metrics" {
                        *response.status_mut() = http::StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                builder.serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}
