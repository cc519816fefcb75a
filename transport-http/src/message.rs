//! The browserver wire format: one HTTP request or response per channel message, correlated by
//! a request id. Pure functions; nothing here panics on any input.
//!
//! Two encodings of the same [`Message`]:
//!
//! - **text**, the original browserver format that browserver-client 0.1 speaks: the HTTP/1.1
//!   message as text, with the id in an `x-brow-req-id` header. Lines may end in `\n` or
//!   `\r\n`; the head ends at the first empty line; the rest is the body. It cannot carry a
//!   body that is not UTF-8.
//! - **json**, the extended form: `{"brow":2,"id":…,"request":{"method","target"}` or
//!   `"response":{"status","reason"}`, `"headers":[[name,value],…],"body":<base64>}`. It keeps
//!   binary bodies, repeated headers (`set-cookie`), empty values and header order.
//!
//! [`decode`] accepts either (a JSON object starts with `{`, an HTTP message never does).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The header that carries the request id in the text form.
pub const REQ_ID_HEADER: &str = "x-brow-req-id";
/// Most headers a message may carry.
pub const MAX_HEADERS: usize = 128;

/// The start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// `METHOD TARGET HTTP/1.1`.
    Request {
        /// The method, as sent (`GET`, `POST`, …).
        method: String,
        /// The request target (path and query).
        target: String,
    },
    /// `HTTP/1.1 STATUS REASON`.
    Response {
        /// The status code.
        status: u16,
        /// The reason phrase (may be empty).
        reason: String,
    },
}

/// One HTTP message travelling over a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The correlation id (`x-brow-req-id`); a response carries its request's id.
    pub id: Option<String>,
    /// Request or response line.
    pub head: Head,
    /// Headers in order, repeated names kept, the id header excluded.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// A plain-text response: `status`, its canonical reason, and `text` as the body.
    pub fn text_response(status: u16, text: &str) -> Message {
        Message {
            id: None,
            head: Head::Response {
                status,
                reason: http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
                    .to_string(),
            },
            headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
            body: Bytes::from(text.to_string()),
        }
    }

    /// A response message from an HTTP response head and its whole body.
    pub fn from_response(parts: &http::response::Parts, body: Bytes) -> Message {
        Message {
            id: None,
            head: Head::Response {
                status: parts.status.as_u16(),
                reason: parts.status.canonical_reason().unwrap_or("").to_string(),
            },
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        }
    }
}

/// Why a channel message is not a browserver message, or cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The HTTP head is malformed or incomplete.
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
    /// More than [`MAX_HEADERS`] headers.
    #[error("too many headers")]
    TooManyHeaders,
    /// The JSON form is malformed.
    #[error("malformed JSON message: {0}")]
    Json(String),
    /// A header name or value would break the text form (CR, LF, or not a token).
    #[error("header {0:?} cannot be written as HTTP text")]
    BadHeader(String),
    /// The method or target cannot be written as HTTP text.
    #[error("request line cannot be written as HTTP text")]
    BadRequestLine,
    /// The body is not UTF-8: only the JSON form can carry it.
    #[error("binary body: use the JSON form")]
    BinaryBody,
}

#[derive(Deserialize)]
struct JsonRequest {
    method: String,
    target: String,
}

#[derive(Deserialize)]
struct JsonResponse {
    status: u16,
    #[serde(default)]
    reason: String,
}

/// The JSON form as read. The body (base64) is borrowed from the input when it can be, as it
/// usually is the bulk of the message.
#[derive(Deserialize)]
struct JsonMessage<'a> {
    #[allow(dead_code)] // present in every message; its value is not checked
    brow: u8,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    request: Option<JsonRequest>,
    #[serde(default)]
    response: Option<JsonResponse>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default, borrow)]
    body: std::borrow::Cow<'a, str>,
}

/// Decodes a channel message in either form.
pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => decode_json(bytes),
        _ => decode_text(bytes),
    }
}

/// Decodes the text form.
pub fn decode_text(bytes: &[u8]) -> Result<Message, CodecError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let is_response = bytes.starts_with(b"HTTP/");
    let (head, raw_headers, consumed) = if is_response {
        let mut r = httparse::Response::new(&mut storage);
        let n = complete(r.parse(bytes))?;
        let status = r
            .code
            .ok_or_else(|| CodecError::Malformed("no status".into()))?;
        let reason = r.reason.unwrap_or("").to_string();
        (Head::Response { status, reason }, r.headers.to_vec(), n)
    } else {
        let mut r = httparse::Request::new(&mut storage);
        let n = complete(r.parse(bytes))?;
        let method = r
            .method
            .ok_or_else(|| CodecError::Malformed("no method".into()))?
            .to_string();
        let target = r
            .path
            .ok_or_else(|| CodecError::Malformed("no target".into()))?
            .to_string();
        (Head::Request { method, target }, r.headers.to_vec(), n)
    };
    let mut id = None;
    let mut headers = Vec::with_capacity(raw_headers.len());
    for h in raw_headers {
        if h.name.eq_ignore_ascii_case(REQ_ID_HEADER) {
            id = Some(String::from_utf8_lossy(h.value).into_owned());
        } else {
            headers.push((h.name.to_ascii_lowercase(), h.value.to_vec()));
        }
    }
    Ok(Message {
        id,
        head,
        headers,
        body: Bytes::copy_from_slice(&bytes[consumed..]),
    })
}

fn complete(status: Result<httparse::Status<usize>, httparse::Error>) -> Result<usize, CodecError> {
    match status {
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) => Err(CodecError::Malformed("incomplete head".into())),
        Err(httparse::Error::TooManyHeaders) => Err(CodecError::TooManyHeaders),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    }
}

fn check_header(name: &str, value: &[u8]) -> Result<(), CodecError> {
    let name_ok = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
    let value_ok = http::HeaderValue::from_bytes(value).is_ok();
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(CodecError::BadHeader(name.to_string()))
    }
}

/// Encodes the text form (`\r\n` line endings, the id as `x-brow-req-id`, last header).
pub fn encode_text(m: &Message) -> Result<String, CodecError> {
    let body = std::str::from_utf8(&m.body).map_err(|_| CodecError::BinaryBody)?;
    let mut out = String::with_capacity(128 + body.len());
    match &m.head {
        Head::Request { method, target } => {
            let method_ok = http::Method::from_bytes(method.as_bytes()).is_ok();
            let target_ok = !target.is_empty() && target.bytes().all(|b| b > b' ' && b != 0x7f);
            if !method_ok || !target_ok {
                return Err(CodecError::BadRequestLine);
            }
            out.push_str(&format!("{method} {target} HTTP/1.1\r\n"));
        }
        Head::Response { status, reason } => {
            if reason.contains(['\r', '\n']) {
                return Err(CodecError::BadRequestLine);
            }
            out.push_str(&format!("HTTP/1.1 {status} {reason}\r\n"));
        }
    }
    for (name, value) in &m.headers {
        check_header(name, value)?;
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value));
        out.push_str("\r\n");
    }
    if let Some(id) = &m.id {
        check_header(REQ_ID_HEADER, id.as_bytes())?;
        out.push_str(&format!("{REQ_ID_HEADER}: {id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    Ok(out)
}

/// Decodes the JSON form.
pub fn decode_json(bytes: &[u8]) -> Result<Message, CodecError> {
    let j: JsonMessage =
        serde_json::from_slice(bytes).map_err(|e| CodecError::Json(e.to_string()))?;
    let head = match (j.request, j.response) {
        (Some(r), None) => Head::Request {
            method: r.method,
            target: r.target,
        },
        (None, Some(r)) => Head::Response {
            status: r.status,
            reason: r.reason,
        },
        _ => {
            return Err(CodecError::Json(
                "exactly one of request and response".into(),
            ));
        }
    };
    if j.headers.len() > MAX_HEADERS {
        return Err(CodecError::TooManyHeaders);
    }
    let body = BASE64
        .decode(j.body.as_bytes())
        .map_err(|e| CodecError::Json(e.to_string()))?;
    Ok(Message {
        id: j.id,
        head,
        headers: j
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_bytes()))
            .collect(),
        body: Bytes::from(body),
    })
}

/// The head of a streamed message — its start line and headers; the body travels in stream
/// frames — in the JSON form (with an empty body).
pub fn encode_head(m: &Message) -> Bytes {
    let head = Message {
        body: Bytes::new(),
        ..m.clone()
    };
    Bytes::from(encode_json(&head))
}

/// Decodes a streamed message's head ([`encode_head`]); a body in it is an error.
pub fn decode_head(bytes: &[u8]) -> Result<Message, CodecError> {
    let m = decode_json(bytes)?;
    if !m.body.is_empty() {
        return Err(CodecError::Json("a stream head carries no body".into()));
    }
    Ok(m)
}

/// Encodes the JSON form. Header values that are not UTF-8 are written lossily (HTTP header
/// values are ASCII in practice); the body is kept exactly.
pub fn encode_json(m: &Message) -> String {
    /// Everything but the body, borrowed (the fields [`JsonMessage`] reads).
    #[derive(Serialize)]
    struct JsonHead<'a> {
        brow: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<JsonRequestRef<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<JsonResponseRef<'a>>,
        headers: Vec<(&'a str, std::borrow::Cow<'a, str>)>,
    }
    #[derive(Serialize)]
    struct JsonRequestRef<'a> {
        method: &'a str,
        target: &'a str,
    }
    #[derive(Serialize)]
    struct JsonResponseRef<'a> {
        status: u16,
        reason: &'a str,
    }
    let (request, response) = match &m.head {
        Head::Request { method, target } => (Some(JsonRequestRef { method, target }), None),
        Head::Response { status, reason } => (
            None,
            Some(JsonResponseRef {
                status: *status,
                reason,
            }),
        ),
    };
    let head = JsonHead {
        brow: 2,
        id: m.id.as_deref(),
        request,
        response,
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v)))
            .collect(),
    };
    // A struct of strings and integers always serialises, to an object ending in `}`. The
    // body is appended by hand: base64 never needs JSON escaping, and a large body would
    // otherwise be scanned for escapes and copied once more.
    let mut out = String::with_capacity(256 + m.body.len().div_ceil(3) * 4);
    if let Ok(json) = serde_json::to_string(&head) {
        out.push_str(json.strip_suffix('}').unwrap_or(&json));
    }
    out.push_str(",\"body\":\"");
    BASE64.encode_string(&m.body, &mut out);
    out.push_str("\"}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn response(body: &'static [u8]) -> Message {
        Message {
            id: Some("k3j2h4g5f6d7s".into()),
            head: Head::Response {
                status: 200,
                reason: "OK".into(),
            },
            headers: vec![
                ("content-type".into(), b"text/plain".to_vec()),
                ("set-cookie".into(), b"a=1".to_vec()),
                ("set-cookie".into(), b"b=2".to_vec()),
                ("x-empty".into(), Vec::new()),
            ],
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn the_original_text_form_round_trips() {
        let m = response(b"Hello, world!");
        let text = encode_text(&m).expect("text");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"));
        assert!(text.contains("x-brow-req-id: k3j2h4g5f6d7s\r\n\r\nHello, world!"));
        assert_eq!(decode(text.as_bytes()), Ok(m));
    }

    #[test]
    fn the_text_form_accepts_bare_newlines_and_removes_the_id_header() {
        let m =
            decode(b"GET /hello?x=1 HTTP/1.1\nhost: abc.vcap.me:3572\nX-Brow-Req-Id: abc\n\nbody")
                .expect("decode");
        assert_eq!(m.id.as_deref(), Some("abc"));
        assert_eq!(
            m.head,
            Head::Request {
                method: "GET".into(),
                target: "/hello?x=1".into()
            }
        );
        assert_eq!(
            m.headers,
            vec![("host".to_string(), b"abc.vcap.me:3572".to_vec())]
        );
        assert_eq!(&m.body[..], b"body");
    }

    #[test]
    fn the_json_form_keeps_binary_bodies_repeated_headers_and_empty_values() {
        let mut m = response(b"");
        m.body = Bytes::from((0..=255u8).collect::<Vec<_>>());
        assert_eq!(encode_text(&m), Err(CodecError::BinaryBody));
        let json = encode_json(&m);
        assert_eq!(decode(json.as_bytes()), Ok(m));
    }

    #[test]
    fn header_injection_is_refused_in_the_text_form() {
        let mut m = response(b"");
        m.headers
            .push(("x-evil".into(), b"a\r\nx-injected: 1".to_vec()));
        assert_eq!(encode_text(&m), Err(CodecError::BadHeader("x-evil".into())));
        let mut m = response(b"");
        m.id = Some("id\r\nx-injected: 1".into());
        assert!(encode_text(&m).is_err());
        let req = Message {
            id: None,
            head: Head::Request {
                method: "GET".into(),
                target: "/ HTTP/1.1\r\nx: y".into(),
            },
            headers: Vec::new(),
            body: Bytes::new(),
        };
        assert_eq!(encode_text(&req), Err(CodecError::BadRequestLine));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b""[..],
            b"garbage",
            b"GET / HTTP/1.1\r\nno-end",
            b"{",
            b"{\"brow\":2}",
            b"HTTP/1.1 abc\r\n\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_text_like_input_never_panics(s in "(GET|HTTP/1.1|\\{)[ -~\\r\\n]{0,200}") {
            let _ = decode(s.as_bytes());
        }

        #[test]
        fn json_form_round_trips_any_body(body in proptest::collection::vec(any::<u8>(), 0..256), status in 100u16..600) {
            let m = Message {
                id: Some("x".into()),
                head: Head::Response { status, reason: String::new() },
                headers: vec![("a".into(), b"1".to_vec()), ("a".into(), b"2".to_vec())],
                body: Bytes::from(body),
            };
            prop_assert_eq!(decode(encode_json(&m).as_bytes()), Ok(m));
        }

        #[test]
        fn json_form_round_trips_any_request(
            id in proptest::option::of("[a-z0-9]{1,12}"),
            method in "[A-Z]{1,8}",
            target in "/[ -~]{0,40}",
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,30}"), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let m = Message {
                id,
                head: Head::Request { method, target },
                headers: headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
                body: Bytes::from(body),
            };
            prop_assert_eq!(decode(encode_json(&m).as_bytes()), Ok(m));
        }
    }
}
