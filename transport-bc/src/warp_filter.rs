//! The warp filter: the same handler as the tower service, for warp applications.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use warp::{Filter, Rejection, Reply};

use browserver_runtime::ClientAddr;

use crate::service::BrowserChannel;

impl BrowserChannel {
    /// A warp filter answering every request under `base`; other requests are rejected with
    /// `not_found` so that the application's other filters can take them.
    ///
    /// ```no_run
    /// # async fn run() {
    /// use warp::Filter;
    /// let (bc, _sessions) = browserver_transport_bc::BrowserChannel::new(Default::default());
    /// let routes = bc.filter().or(warp::path::end().map(|| "home"));
    /// warp::serve(routes).run(([127, 0, 0, 1], 3030)).await;
    /// # }
    /// ```
    pub fn filter(
        &self,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection>
    + Clone
    + Send
    + Sync
    + 'static
    + use<> {
        let owner = self.clone();
        let bc = self.clone();
        warp::path::full()
            .and_then(move |path: warp::path::FullPath| {
                let ours = owner.owns(path.as_str());
                async move {
                    if ours {
                        Ok(())
                    } else {
                        Err(warp::reject::not_found())
                    }
                }
            })
            .untuple_one()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::addr::remote())
            .and(warp::body::stream())
            .then(
                move |method, path: warp::path::FullPath, query: String, headers, remote, body| {
                    let bc = bc.clone();
                    async move {
                        let uri = if query.is_empty() {
                            path.as_str().to_string()
                        } else {
                            format!("{}?{query}", path.as_str())
                        };
                        let body =
                            StreamBody::new(warp_body_frames(body).map_ok(http_body::Frame::data));
                        let mut req = http::Request::new(body);
                        *req.method_mut() = method;
                        *req.headers_mut() = headers;
                        if let Ok(uri) = uri.parse() {
                            *req.uri_mut() = uri;
                        }
                        if let Some(addr) = remote {
                            req.extensions_mut().insert(ClientAddr(addr));
                        }
                        let response = bc.handle(req).await;
                        let (parts, body) = response.into_parts();
                        let exact = http_body::Body::size_hint(&body).exact();
                        let mut reply = if exact.is_some() {
                            let bytes = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            warp::http::Response::new(bytes).into_response()
                        } else {
                            warp::reply::stream(BodyDataStream::new(body)).into_response()
                        };
                        *reply.status_mut() = parts.status;
                        *reply.headers_mut() = parts.headers;
                        reply
                    }
                },
            )
    }
}

fn warp_body_frames(
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, warp::Error>> + Send + 'static {
    body.map_ok(|mut buf| buf.copy_to_bytes(buf.remaining()))
}
