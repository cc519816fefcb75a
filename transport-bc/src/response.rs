//! Building BrowserChannel responses: the standard headers and the error page.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, EXPIRES, PRAGMA, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::codec;

/// The headers of every response: no caching, no sniffing, `content_type`.
pub(crate) fn standard_headers(content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"),
    );
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        EXPIRES,
        HeaderValue::from_static("Fri, 01 Jan 1990 00:00:00 GMT"),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h
}

/// A 200 with these headers and this body.
pub(crate) fn ok_response(headers: &HeaderMap, body: ResponseBody) -> Response<ResponseBody> {
    let mut r = Response::new(body);
    *r.headers_mut() = headers.clone();
    r
}

/// `<html><body><h1>MESSAGE</h1></body></html>` with the configured headers, in one write.
pub(crate) fn error_response(
    status: u16,
    message: &str,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    with_status(
        status,
        ok_response(headers, ResponseBody::full(codec::error_body(message))),
    )
}

/// `response` with `status` (400 if it is not a valid status).
pub(crate) fn with_status(
    status: u16,
    mut response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response
}

/// A short plain-text answer.
pub(crate) fn plain_response(
    status: StatusCode,
    text: &'static str,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let mut r = ok_response(
        headers,
        ResponseBody::full(Bytes::from_static(text.as_bytes())),
    );
    *r.status_mut() = status;
    r
}
