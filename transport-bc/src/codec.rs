//! The BrowserChannel v8 wire format, as pure functions: no I/O, no state. Used by the server
//! transport and by the Rust client.
//!
//! - Server → client: arrays `[[id, data], …]⏎` framed as length-prefixed chunks (XHR) or as
//!   `<script>` blocks (the html iframe transport).
//! - Client → server: form-encoded maps (`count`, `ofs`, `req<i>_<key>`), or node-browserchannel's
//!   JSON body extension.
//!
//! All JSON this module writes is ASCII-only (every non-ASCII UTF-16 unit escaped as `\uXXXX`), so
//! byte lengths equal the UTF-16 lengths the Closure client counts, and U+2028/U+2029 are always
//! escaped.

use std::io;

use serde::Serialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A forward-channel map: string keys to string values.
pub type Map = browserver_runtime::Map;

/// The fixed padding Google's server writes after the first script of an html response.
pub const HTML_PADDING: &str = "7cca69475363026330a0d99468e88d23ce95e222591126443015f5f462d9a177186c8701fb45a6ffee0daf1a178fc0f58cd309308fba7e6f011ac38c9cdd4580760f1d4560a84d5ca0355ecbbed2ab715a3350fe0c479050640bd0e77acec90c58c4d3dd0f5cf8d4510e68c8b12e087bd88cad349aafd2ab16b07b0b1b8276091217a44a9fe92fedacffff48092ee693af";

/// The script that ends an html response normally.
pub const HTML_DONE: &str = "<script>try  {parent.d(); }catch (e){}</script>\n";

/// Errors decoding what a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The forward-channel body is malformed (missing or non-numeric `count`/`ofs`, a map index
    /// outside `count`, bad JSON body).
    #[error("Bad data")]
    BadData,
    /// More maps in one request than allowed.
    #[error("too many maps in one request ({count}, limit {limit})")]
    TooManyMaps {
        /// Maps the request declared.
        count: u64,
        /// The configured limit.
        limit: u64,
    },
    /// More keys in one request's maps than allowed.
    #[error("too many map entries in one request (limit {limit})")]
    TooManyEntries {
        /// The configured limit.
        limit: usize,
    },
    /// A server → client chunk is malformed.
    #[error("bad chunk: {0}")]
    BadChunk(&'static str),
    /// A server → client answer is not what the protocol says it is.
    #[error("bad answer: {0}")]
    BadAnswer(&'static str),
}

/// Bounds on one forward-channel request, so that parsing it costs memory in proportion to
/// its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLimits {
    /// Most maps (or JSON messages). 1 000 (the Closure client's own batch).
    pub max_maps: u64,
    /// Most keys over all maps of a form body. 10 000.
    pub max_entries: usize,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        ForwardLimits {
            max_maps: 1000,
            max_entries: 10_000,
        }
    }
}

/// What a forward-channel request carried.
#[derive(Debug, Clone)]
pub enum ForwardBody {
    /// `count=0`: no maps.
    Empty,
    /// Form-encoded maps with ids `ofs, ofs + 1, …`.
    Maps {
        /// Id of the first map.
        ofs: u64,
        /// The maps, in id order (an index with no keys is an empty map).
        maps: Vec<Map>,
    },
    /// node-browserchannel's JSON body: messages with ids `ofs, ofs + 1, …`.
    Json {
        /// Id of the first message.
        ofs: u64,
        /// The messages, as the JSON text the client sent (validated, not parsed into a tree).
        messages: Vec<Box<RawValue>>,
    },
}

impl ForwardBody {
    /// Bytes of keys, values and messages it holds.
    pub fn size(&self) -> usize {
        match self {
            ForwardBody::Empty => 0,
            ForwardBody::Maps { maps, .. } => maps
                .iter()
                .flat_map(|m| m.iter())
                .map(|(k, v)| k.len().saturating_add(v.len()))
                .fold(0, usize::saturating_add),
            ForwardBody::Json { messages, .. } => messages
                .iter()
                .map(|m| m.get().len())
                .fold(0, usize::saturating_add),
        }
    }
}

impl PartialEq for ForwardBody {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ForwardBody::Empty, ForwardBody::Empty) => true,
            (ForwardBody::Maps { ofs: a, maps: x }, ForwardBody::Maps { ofs: b, maps: y }) => {
                a == b && x == y
            }
            (
                ForwardBody::Json {
                    ofs: a,
                    messages: x,
                },
                ForwardBody::Json {
                    ofs: b,
                    messages: y,
                },
            ) => a == b && x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.get() == q.get()),
            _ => false,
        }
    }
}

/// A serde_json formatter that escapes every non-ASCII UTF-16 unit as `\uXXXX` (lowercase hex).
struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialises `value` as compact JSON with every non-ASCII character escaped.
pub fn to_ascii_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value.serialize(&mut ser)?;
    // The formatter writes only ASCII.
    String::from_utf8(out).map_err(|e| serde_json::Error::io(io::Error::other(e)))
}

/// JSON text with every non-ASCII character escaped as `\uXXXX` (the client's length framing
/// counts UTF-16 units; ASCII makes bytes and units agree). Valid JSON has non-ASCII only
/// inside strings, so the escaped text is the same value; everything else — numbers
/// included — is kept as written.
pub fn ascii_json(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                use std::fmt::Write;
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A JSON string literal of `s`, ASCII-only, with `<` also escaped so that it can sit inside an
/// html `<script>` block.
pub fn js_string_literal(s: &str) -> String {
    let json = to_ascii_json(s).unwrap_or_else(|_| "\"\"".to_string());
    json.replace('<', "\\u003c")
}

/// One length-prefixed chunk: `LENGTH⏎PAYLOAD`. `payload` must be ASCII (as everything this
/// module writes is), so its byte length is its UTF-16 length.
pub fn chunk(payload: &str) -> String {
    let mut out = String::with_capacity(payload.len() + 8);
    out.push_str(&payload.len().to_string());
    out.push('\n');
    out.push_str(payload);
    out
}

/// The text of a back-channel batch, `[[id,data],…]⏎`, from ids and already-serialised JSON
/// (ASCII, as [`to_ascii_json`] writes it; anything else is replaced lossily).
pub fn array_batch<'a>(arrays: impl IntoIterator<Item = (u64, &'a [u8])>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(256);
    out.push('[');
    for (i, (id, data)) in arrays.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "[{id},");
        match std::str::from_utf8(data) {
            Ok(text) => out.push_str(text),
            Err(_) => out.push_str(&String::from_utf8_lossy(data)),
        }
        out.push(']');
    }
    out.push_str("]\n");
    out
}

/// The `c` array announcing a session: `["c","<sid>",<host prefix or null>,8]`.
pub fn open_array(sid: &str, host_prefix: Option<&str>) -> String {
    let prefix = host_prefix.map_or_else(|| "null".to_string(), js_string_literal);
    format!("[\"c\",{},{prefix},8]", js_string_literal(sid))
}

/// The keep-alive array.
pub const NOOP_ARRAY: &str = "[\"noop\"]";
/// The stop array.
pub const STOP_ARRAY: &str = "[\"stop\"]";

/// The start of an html response: `<html><body>`, plus the `document.domain` script when
/// `domain` is non-empty.
pub fn html_prelude(domain: Option<&str>) -> String {
    match domain.filter(|d| !d.is_empty()) {
        Some(d) => format!(
            "<html><body><script>try{{document.domain={};}}catch(e){{}}</script>\n",
            js_string_literal(d)
        ),
        None => "<html><body>".to_string(),
    }
}

/// One html data script, `<script>try {parent.m("…")} catch(e) {}</script>⏎`, followed by the
/// padding line when it is the first of its response.
pub fn html_script(text: &str, first: bool) -> String {
    let mut out = format!(
        "<script>try {{parent.m({})}} catch(e) {{}}</script>\n",
        js_string_literal(text)
    );
    if first {
        out.push_str(HTML_PADDING);
        out.push('\n');
    }
    out
}

/// The html error body shared by every error response: `<html><body><h1>MSG</h1></body></html>`.
pub fn error_body(message: &str) -> String {
    format!("<html><body><h1>{message}</h1></body></html>")
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A request's query parameters, in order (repeated keys kept).
pub type Query = Vec<(String, String)>;

/// Parses a request's query (`None`: no query).
pub fn parse_query(query: Option<&str>) -> Query {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name`.
pub fn param<'a>(q: &'a Query, name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `AID` and `OAID`: a leading integer; anything else (a negative one, or one beyond `u64`)
/// acknowledges nothing.
pub fn leading_u64(s: &str) -> Option<u64> {
    let digits: &str = &s[..s.bytes().take_while(u8::is_ascii_digit).count()];
    digits.parse().ok()
}

/// Parses a forward-channel body. `json` selects node-browserchannel's JSON body form
/// (`Content-Type: application/json`). The ids `ofs .. ofs + count` must fit in a `u64`.
pub fn parse_forward(
    body: &[u8],
    json: bool,
    limits: ForwardLimits,
) -> Result<ForwardBody, CodecError> {
    if json {
        return parse_json_forward(body, limits.max_maps);
    }
    let mut count = None;
    let mut ofs = None;
    let mut entries = Vec::new();
    for (key, value) in form_urlencoded::parse(body) {
        match &*key {
            "count" => {
                if count.is_none() {
                    count = Some(parse_u64(&value).ok_or(CodecError::BadData)?);
                }
            }
            "ofs" => {
                if ofs.is_none() {
                    ofs = Some(parse_u64(&value).ok_or(CodecError::BadData)?);
                }
            }
            _ => {
                if let Some((index, name)) = split_map_key(&key) {
                    if entries.len() >= limits.max_entries {
                        return Err(CodecError::TooManyEntries {
                            limit: limits.max_entries,
                        });
                    }
                    entries.push((index, name.to_string(), value.into_owned()));
                }
            }
        }
    }
    let count = count.ok_or(CodecError::BadData)?;
    if count == 0 {
        return Ok(ForwardBody::Empty);
    }
    if count > limits.max_maps {
        return Err(CodecError::TooManyMaps {
            count,
            limit: limits.max_maps,
        });
    }
    let ofs = ofs.ok_or(CodecError::BadData)?;
    ofs.checked_add(count).ok_or(CodecError::BadData)?;
    let mut maps = vec![Map::new(); usize::try_from(count).map_err(|_| CodecError::BadData)?];
    for (index, name, value) in entries {
        let index = usize::try_from(index).map_err(|_| CodecError::BadData)?;
        let map = maps.get_mut(index).ok_or(CodecError::BadData)?;
        map.insert(name, value);
    }
    Ok(ForwardBody::Maps { ofs, maps })
}

/// `req<digits>_<key>` → `(index, key)`.
fn split_map_key(key: &str) -> Option<(u64, &str)> {
    let rest = key.strip_prefix("req")?;
    let underscore = rest.find('_')?;
    let index = parse_u64(&rest[..underscore])?;
    let name = &rest[underscore + 1..];
    (!name.is_empty()).then_some((index, name))
}

#[derive(serde::Deserialize)]
struct JsonForward<'a> {
    #[serde(default)]
    ofs: Option<u64>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Collects the elements of a JSON array as raw JSON text, refusing more than `max`.
struct BoundedArray<'a> {
    max: u64,
    out: &'a mut Vec<Box<RawValue>>,
    exceeded: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Box<RawValue>>()? {
            if self.out.len() as u64 >= self.max {
                *self.exceeded = true;
                return Err(serde::de::Error::custom("too many messages"));
            }
            self.out.push(v);
        }
        Ok(())
    }
}

/// Deepest nesting of arrays and objects accepted in a JSON-body message.
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether `json` (valid JSON text) nests arrays and objects no deeper than `max`.
fn depth_within(json: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

fn parse_json_forward(body: &[u8], max_maps: u64) -> Result<ForwardBody, CodecError> {
    let forward: JsonForward<'_> = serde_json::from_slice(body).map_err(|_| CodecError::BadData)?;
    let mut messages = Vec::new();
    let mut exceeded = false;
    let mut de = serde_json::Deserializer::from_str(forward.data.get());
    let parsed = BoundedArray {
        max: max_maps,
        out: &mut messages,
        exceeded: &mut exceeded,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if exceeded {
        return Err(CodecError::TooManyMaps {
            count: max_maps.saturating_add(1),
            limit: max_maps,
        });
    }
    parsed.map_err(|_| CodecError::BadData)?;
    if !messages
        .iter()
        .all(|m| depth_within(m.get(), MAX_JSON_DEPTH))
    {
        return Err(CodecError::BadData);
    }
    if messages.is_empty() {
        return Ok(ForwardBody::Empty);
    }
    let ofs = forward.ofs.ok_or(CodecError::BadData)?;
    ofs.checked_add(messages.len() as u64)
        .ok_or(CodecError::BadData)?;
    Ok(ForwardBody::Json { ofs, messages })
}

/// Encodes maps as a form body: `count=N&ofs=O&req0_key=value…` (keys and values
/// percent-encoded).
pub fn encode_forward(ofs: u64, maps: &[Map]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    ser.append_pair("count", &maps.len().to_string());
    if !maps.is_empty() {
        ser.append_pair("ofs", &ofs.to_string());
    }
    for (i, map) in maps.iter().enumerate() {
        for (k, v) in map {
            ser.append_pair(&format!("req{i}_{k}"), v);
        }
    }
    ser.finish()
}

/// Splits the front of a length-prefixed stream into its first chunk. Returns `Ok(None)` when
/// the chunk is not complete yet, else the chunk's payload and the bytes it consumed.
/// (Payloads this crate writes are ASCII; a peer's non-ASCII payload is measured in UTF-16
/// units, as the Closure client does.)
pub fn split_chunk(buf: &str) -> Result<Option<(&str, usize)>, CodecError> {
    let Some(newline) = buf.find('\n') else {
        if buf.len() > 20 || !buf.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodecError::BadChunk("length prefix is not a number"));
        }
        return Ok(None);
    };
    let len: usize = parse_u64(&buf[..newline])
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(CodecError::BadChunk("length prefix is not a number"))?;
    let payload_start = newline + 1;
    let mut units = 0;
    for (offset, ch) in buf[payload_start..].char_indices() {
        if units == len {
            let end = payload_start + offset;
            return Ok(Some((&buf[payload_start..end], end)));
        }
        units += ch.len_utf16();
        if units > len {
            return Err(CodecError::BadChunk("length splits a character"));
        }
    }
    if units == len {
        return Ok(Some((&buf[payload_start..], buf.len())));
    }
    Ok(None)
}

/// The test channel's first answer to a streaming probe (`TYPE=xmlhttp`): it arrives alone
/// if responses stream, together with [`TEST_SECOND`] behind a buffering proxy.
pub const TEST_FIRST: &str = "11111";
/// The test channel's second answer, after the server's pause.
pub const TEST_SECOND: &str = "2";

/// The test channel's `MODE=init` answer: `[hostPrefix|null,null]`.
pub fn test_init_answer(host_prefix: Option<&str>) -> String {
    let prefix = host_prefix.map_or_else(|| "null".to_string(), js_string_literal);
    format!("[{prefix},null]")
}

/// The host prefix in a `MODE=init` answer.
pub fn parse_test_init(answer: &str) -> Result<Option<String>, CodecError> {
    let (prefix, _): (Option<String>, serde::de::IgnoredAny) =
        serde_json::from_str(answer).map_err(|_| CodecError::BadAnswer("test channel"))?;
    Ok(prefix)
}

/// A forward request's answer: `[backChannelPresent, lastSentArrayId, outstandingBytes]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardStatus {
    /// Whether the server has a back channel for the session.
    pub back_channel: bool,
    /// The last array id it sent (`None`: none yet, written `-1`).
    pub last_sent: Option<u64>,
    /// Bytes of arrays sent and not yet acknowledged.
    pub outstanding: u64,
}

impl ForwardStatus {
    /// The array's JSON text (not chunked).
    pub fn encode(&self) -> String {
        let last = self
            .last_sent
            .map_or_else(|| "-1".to_string(), |s| s.to_string());
        format!(
            "[{},{last},{}]",
            u8::from(self.back_channel),
            self.outstanding
        )
    }

    /// Reads a forward answer's body: one chunk holding the array.
    pub fn parse(body: &str) -> Result<ForwardStatus, CodecError> {
        let Some((payload, used)) = split_chunk(body)? else {
            return Err(CodecError::BadAnswer("forward answer is incomplete"));
        };
        if used != body.len() {
            return Err(CodecError::BadAnswer(
                "forward answer has more than one chunk",
            ));
        }
        let (present, last, outstanding): (u8, i64, u64) = serde_json::from_str(payload)
            .map_err(|_| CodecError::BadAnswer("forward answer is not a status array"))?;
        Ok(ForwardStatus {
            back_channel: present == 1,
            last_sent: u64::try_from(last).ok(),
            outstanding,
        })
    }
}

/// Incremental decoding of a server → client stream of length-prefixed chunks, whose network
/// reads may split chunks and UTF-8 sequences anywhere. Holds at most `limit` bytes of an
/// unfinished chunk.
#[derive(Debug)]
pub struct ChunkReader {
    bytes: Vec<u8>,
    text: String,
    limit: usize,
}

impl Default for ChunkReader {
    fn default() -> Self {
        ChunkReader::with_limit(16 << 20)
    }
}

impl ChunkReader {
    /// A reader that refuses to hold more than `limit` bytes of unfinished chunks.
    pub fn with_limit(limit: usize) -> ChunkReader {
        ChunkReader {
            bytes: Vec::new(),
            text: String::new(),
            limit,
        }
    }

    /// Adds bytes read from the network; returns the payloads completed by them, in order.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<String>, CodecError> {
        self.bytes.extend_from_slice(data);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                return Err(CodecError::BadChunk("invalid UTF-8"));
            }
            Err(e) => e.valid_up_to(),
        };
        self.text
            .push_str(std::str::from_utf8(&self.bytes[..valid]).unwrap_or_default());
        self.bytes.drain(..valid);
        let mut out = Vec::new();
        while let Some((payload, used)) = split_chunk(&self.text)? {
            out.push(payload.to_string());
            self.text.drain(..used);
        }
        if self.text.len().saturating_add(self.bytes.len()) > self.limit {
            return Err(CodecError::BadChunk("chunk larger than the limit"));
        }
        Ok(out)
    }

    /// Whether nothing unfinished is held (a response that ends otherwise was cut).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.text.is_empty()
    }
}

/// Arrays of a back channel: each id with its data as the server wrote it.
pub type Arrays = Vec<(u64, Box<RawValue>)>;

/// The arrays of one back-channel payload, `[[id,data],…]`: each id with its data as the
/// server wrote it (not parsed into a tree: numbers keep every digit).
pub fn parse_arrays(payload: &str) -> Result<Arrays, CodecError> {
    serde_json::from_str(payload.trim_end()).map_err(|_| CodecError::BadAnswer("arrays"))
}

/// What one array of a back channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayKind {
    /// `["c", sid, hostPrefix, version]`: the session is open.
    Open {
        /// The session id.
        sid: String,
        /// The host prefix the server offers.
        host_prefix: Option<String>,
    },
    /// `["noop"]`: a keep-alive.
    Noop,
    /// `["stop"]`: do not reconnect.
    Stop,
    /// An application message.
    Message,
}

/// Classifies one array's data.
pub fn array_kind(data: &RawValue) -> ArrayKind {
    let text = data.get();
    if !text.starts_with("[\"") {
        return ArrayKind::Message;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(text) {
        Ok(items) => match items.first().and_then(|v| v.as_str()) {
            Some("noop") if items.len() == 1 => ArrayKind::Noop,
            Some("stop") if items.len() == 1 => ArrayKind::Stop,
            Some("c") if items.len() >= 2 => match items[1].as_str() {
                Some(sid) => ArrayKind::Open {
                    sid: sid.to_string(),
                    host_prefix: items.get(2).and_then(|p| p.as_str()).map(str::to_string),
                },
                None => ArrayKind::Message,
            },
            _ => ArrayKind::Message,
        },
        Err(_) => ArrayKind::Message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(max_maps: u64) -> ForwardLimits {
        ForwardLimits {
            max_maps,
            ..ForwardLimits::default()
        }
    }
    use serde_json::json;

    #[test]
    fn ascii_json_escapes_every_non_ascii_unit_including_line_separators() {
        let v = json!({"a": "hello\u{2028}\u{2029}there", "b": "⚗", "c": "😀"});
        assert_eq!(
            to_ascii_json(&v).ok().as_deref(),
            Some(r#"{"a":"hello\u2028\u2029there","b":"\u2697","c":"\ud83d\ude00"}"#)
        );
    }

    #[test]
    fn chunk_length_counts_the_payload() {
        assert_eq!(chunk("[0,0,0]"), "7\n[0,0,0]");
    }

    #[test]
    fn creation_batch_matches_the_spec_byte_for_byte() {
        let c = open_array("0rv5gxgm", None);
        let text = array_batch([(0, c.as_bytes())]);
        assert_eq!(chunk(&text), "30\n[[0,[\"c\",\"0rv5gxgm\",null,8]]]\n");
        let c = open_array("0rv5gxgm", Some("chan"));
        let msg = br#"["hello","there",null,1000,{},[],[555]]"#;
        let text = array_batch([(0, c.as_bytes()), (1, &msg[..])]);
        assert_eq!(chunk(&text).split('\n').next(), Some("76"));
    }

    #[test]
    fn html_script_double_encodes_the_chunk_text_and_pads_only_the_first() {
        let text = "[[2,{\"other\":\"data\"}]]\n";
        let first = html_script(text, true);
        assert!(first.starts_with(
            "<script>try {parent.m(\"[[2,{\\\"other\\\":\\\"data\\\"}]]\\n\")} catch(e) {}</script>\n7cca"
        ));
        assert!(first.ends_with("693af\n"));
        assert!(!html_script(text, false).contains(HTML_PADDING));
        assert!(html_script("</script>", false).contains("\\u003c/script>"));
    }

    #[test]
    fn html_prelude_sets_document_domain_when_given() {
        assert_eq!(html_prelude(None), "<html><body>");
        assert_eq!(html_prelude(Some("")), "<html><body>");
        assert_eq!(
            html_prelude(Some("foo.bar.com")),
            "<html><body><script>try{document.domain=\"foo.bar.com\";}catch(e){}</script>\n"
        );
    }

    #[test]
    fn form_maps_are_parsed_relative_to_ofs_with_keys_containing_underscores() {
        let body = b"count=3&ofs=7&req0_JSON=%5B1%2C2%5D&req1__S=hi%20there&req2_a=1&req2_b_c=2";
        let ForwardBody::Maps { ofs, maps } = parse_forward(body, false, lim(1000)).expect("parse")
        else {
            panic!("maps expected")
        };
        assert_eq!(ofs, 7);
        assert_eq!(maps[0]["JSON"], "[1,2]");
        assert_eq!(maps[1]["_S"], "hi there");
        assert_eq!(maps[2]["b_c"], "2");
    }

    #[test]
    fn checklist_34_odd_keys_and_values_decode() {
        let body = b"count=1&ofs=0&req0__int_%5E%26%5E%25%23net=hi%22there%26%26%0Asam";
        let ForwardBody::Maps { maps, .. } = parse_forward(body, false, lim(1000)).expect("parse")
        else {
            panic!()
        };
        assert_eq!(maps[0]["_int_^&^%#net"], "hi\"there&&\nsam");
    }

    #[test]
    fn a_hole_below_count_is_an_empty_map() {
        let ForwardBody::Maps { maps, .. } =
            parse_forward(b"count=2&ofs=0&req1_a=b", false, lim(10)).expect("parse")
        else {
            panic!()
        };
        assert!(maps[0].is_empty());
    }

    #[test]
    fn malformed_forward_bodies_are_bad_data() {
        for body in [
            &b""[..],
            b"count=1",
            b"count=-1",
            b"count=x",
            b"count=1&ofs=x&req0_a=b",
            b"count=1&ofs=0&req5_a=b",
        ] {
            assert_eq!(
                parse_forward(body, false, lim(10)),
                Err(CodecError::BadData),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_forward(b"count=0", false, lim(10)),
            Ok(ForwardBody::Empty)
        );
        assert_eq!(
            parse_forward(b"count=11&ofs=0", false, lim(10)),
            Err(CodecError::TooManyMaps {
                count: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn json_bodies_carry_messages() {
        let body = br#"{"ofs":0,"data":[{},{"x":null},"hi"]}"#;
        assert_eq!(
            parse_forward(body, true, lim(10)),
            Ok(ForwardBody::Json {
                ofs: 0,
                messages: ["{}", "{\"x\":null}", "\"hi\""]
                    .iter()
                    .map(|t| RawValue::from_string(t.to_string()).expect("json"))
                    .collect()
            })
        );
        for bad in [&b"null"[..], b"{", b"{\"ofs\":0}", b"[]"] {
            assert_eq!(parse_forward(bad, true, lim(10)), Err(CodecError::BadData));
        }
    }

    #[test]
    fn json_bodies_are_bounded_in_messages_depth_and_ids() {
        let many = format!("{{\"ofs\":0,\"data\":[{}0]}}", "0,".repeat(10));
        assert_eq!(
            parse_forward(many.as_bytes(), true, lim(10)),
            Err(CodecError::TooManyMaps {
                count: 11,
                limit: 10
            })
        );
        let deep = format!(
            "{{\"ofs\":0,\"data\":[{}{}]}}",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert_eq!(
            parse_forward(deep.as_bytes(), true, lim(10)),
            Err(CodecError::BadData)
        );
        let overflow = format!("{{\"ofs\":{},\"data\":[1,2]}}", u64::MAX);
        assert_eq!(
            parse_forward(overflow.as_bytes(), true, lim(10)),
            Err(CodecError::BadData)
        );
    }

    #[test]
    fn form_bodies_are_bounded_in_entries_and_ids() {
        let limits = ForwardLimits {
            max_maps: 10,
            max_entries: 3,
        };
        assert_eq!(
            parse_forward(
                b"count=1&ofs=0&req0_a=1&req0_b=2&req0_c=3&req0_d=4",
                false,
                limits
            ),
            Err(CodecError::TooManyEntries { limit: 3 })
        );
        let overflow = format!("count=2&ofs={}&req0_a=1", u64::MAX);
        assert_eq!(
            parse_forward(overflow.as_bytes(), false, limits),
            Err(CodecError::BadData)
        );
    }

    #[test]
    fn forward_encoding_round_trips() {
        let mut m = Map::new();
        m.insert("JSON".into(), "{\"a\":\"&=+ ⚗\"}".into());
        let body = encode_forward(5, std::slice::from_ref(&m));
        assert_eq!(
            parse_forward(body.as_bytes(), false, lim(10)),
            Ok(ForwardBody::Maps {
                ofs: 5,
                maps: vec![m]
            })
        );
    }

    #[test]
    fn chunks_split_by_utf16_length() {
        assert_eq!(split_chunk("7\n[0,0,0]rest"), Ok(Some(("[0,0,0]", 9))));
        assert_eq!(split_chunk("7\n[0,0"), Ok(None));
        assert_eq!(split_chunk("12"), Ok(None));
        assert_eq!(split_chunk("4\n\"😀\"x"), Ok(Some(("\"😀\"", 8))));
        assert!(split_chunk("x\n").is_err());
    }

    #[test]
    fn forward_status_round_trips_and_refuses_anything_else() {
        for status in [
            ForwardStatus {
                back_channel: true,
                last_sent: Some(7),
                outstanding: 12,
            },
            ForwardStatus {
                back_channel: false,
                last_sent: None,
                outstanding: 0,
            },
        ] {
            let body = chunk(&status.encode());
            assert_eq!(ForwardStatus::parse(&body), Ok(status));
        }
        assert_eq!(
            chunk(
                &ForwardStatus {
                    back_channel: false,
                    last_sent: None,
                    outstanding: 0
                }
                .encode()
            ),
            "8\n[0,-1,0]"
        );
        for bad in [
            "",
            "8\n[0,-1,0",
            "3\n[0]",
            "8\n[0,-1,0]1\n2",
            "x\n[]",
            "6\n[0,0,0]",
        ] {
            assert!(ForwardStatus::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_test_channel_answers_round_trip() {
        assert_eq!(parse_test_init(&test_init_answer(None)), Ok(None));
        assert_eq!(
            parse_test_init(&test_init_answer(Some("b<1"))),
            Ok(Some("b<1".to_string()))
        );
        assert!(parse_test_init("[1,null]").is_err());
        assert!(parse_test_init("").is_err());
    }

    #[test]
    fn a_chunk_reader_reassembles_chunks_split_anywhere() {
        let stream = format!("{}{}", chunk("[[0,\"\\u00e9\"]]"), chunk("[[1,2.50]]"));
        let mut expected = Vec::new();
        for cut in 0..=stream.len() {
            let mut reader = ChunkReader::default();
            let mut got = reader.push(&stream.as_bytes()[..cut]).expect("first part");
            got.extend(reader.push(&stream.as_bytes()[cut..]).expect("second part"));
            assert!(reader.is_empty());
            if cut == 0 {
                expected = got.clone();
            }
            assert_eq!(got, expected, "cut at {cut}");
        }
        assert_eq!(expected.len(), 2);
    }

    #[test]
    fn a_chunk_reader_splits_utf8_across_reads_and_bounds_what_it_holds() {
        let mut reader = ChunkReader::default();
        let text = "é";
        let stream = format!("1\n{text}");
        let bytes = stream.as_bytes();
        assert_eq!(
            reader.push(&bytes[..3]).expect("partial"),
            Vec::<String>::new()
        );
        assert_eq!(reader.push(&bytes[3..]).expect("rest"), ["é"]);
        let mut small = ChunkReader::with_limit(8);
        assert!(small.push(b"100\n0123456789").is_err());
        assert!(ChunkReader::default().push(&[b'1', b'\n', 0xff]).is_err());
    }

    #[test]
    fn arrays_keep_their_data_as_written() {
        let arrays = parse_arrays(
            "[[0,[\"c\",\"s\",null,8]],[1,1.0e+21],[2,[\"noop\"]],[3,[\"stop\"]],[4,[\"x\"]]]\n",
        )
        .expect("arrays");
        let ids: Vec<u64> = arrays.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(arrays[1].1.get(), "1.0e+21");
        let kinds: Vec<ArrayKind> = arrays.iter().map(|(_, d)| array_kind(d)).collect();
        assert_eq!(
            kinds,
            [
                ArrayKind::Open {
                    sid: "s".into(),
                    host_prefix: None
                },
                ArrayKind::Message,
                ArrayKind::Noop,
                ArrayKind::Stop,
                ArrayKind::Message
            ]
        );
        assert!(parse_arrays("[[-1,0]]").is_err());
        assert!(parse_arrays("[[0]]").is_err());
        assert!(parse_arrays("{}").is_err());
    }

    #[test]
    fn ascii_json_escapes_only_non_ascii_and_keeps_numbers() {
        assert_eq!(ascii_json("[1.10,2e5]"), "[1.10,2e5]");
        assert_eq!(ascii_json("\"é😀\""), "\"\\u00e9\\ud83d\\ude00\"");
    }
}
