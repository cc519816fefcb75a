//! What the application sends and receives, whatever the transport.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A BrowserChannel form map: what `sendMap` sends, key → value.
pub type Map = BTreeMap<String, String>;

/// One message, in either direction.
///
/// What each transport carries:
///
/// | | BrowserChannel | WebSocket (plain) | WebSocket (session mode) |
/// |---|---|---|---|
/// | [`Text`](Message::Text) | JSON text (one value) | a text frame | a text message |
/// | [`Binary`](Message::Binary) | — (sending fails with [`SendError::Unsupported`](crate::SendError::Unsupported)) | a binary frame | a binary message |
/// | [`Map`](Message::Map) | a map without a `JSON` or `_S` key (received only) | — | — |
///
/// BrowserChannel is JSON-only: a map's `JSON` key arrives as `Text` with that JSON, exactly
/// as the client wrote it (numbers keep every digit); a `_S` string arrives as `Text` with
/// that string as JSON. Text sent on BrowserChannel must be JSON; the transport escapes
/// non-ASCII characters for the client's length framing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Text (on BrowserChannel: JSON text).
    Text(String),
    /// Bytes.
    Binary(Bytes),
    /// A BrowserChannel map that carries no message (`JSON` or `_S`).
    Map(Map),
}

impl Message {
    /// The message as JSON text: `Text` as it is; a map's `JSON` entry; `None` for binary
    /// messages and maps without one.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text),
            Message::Map(map) => map.get("JSON").map(String::as_str),
            Message::Binary(_) => None,
        }
    }

    /// The message parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self {
            Message::Binary(bytes) => serde_json::from_slice(bytes),
            Message::Map(map) => match map.get("JSON") {
                Some(text) => serde_json::from_str(text),
                None => serde_json::from_value(serde_json::to_value(map)?),
            },
            Message::Text(text) => serde_json::from_str(text),
        }
    }

    /// A text message holding `value` as JSON.
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Message, serde_json::Error> {
        serde_json::to_string(value).map(Message::Text)
    }

    /// The message's size in bytes (what the buffer limits count).
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Map(map) => map.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Message {
    fn from(text: String) -> Message {
        Message::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Message {
        Message::Text(text.to_string())
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Message {
        Message::Binary(data)
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Message {
        Message::Binary(Bytes::from(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_reads_as_its_json_entry() {
        let map: Map = [("JSON".to_string(), "[1,2.50]".to_string())].into();
        let m = Message::Map(map);
        assert_eq!(m.as_text(), Some("[1,2.50]"));
        assert_eq!(m.json::<Vec<f64>>().expect("json"), [1.0, 2.5]);
    }

    #[test]
    fn a_map_without_json_reads_as_an_object() {
        let map: Map = [("k".to_string(), "v".to_string())].into();
        let value: serde_json::Value = Message::Map(map).json().expect("object");
        assert_eq!(value, serde_json::json!({"k": "v"}));
    }

    #[test]
    fn length_counts_every_byte() {
        assert_eq!(Message::from("héllo").len(), 6);
        assert_eq!(Message::from(vec![0u8; 3]).len(), 3);
        let map: Map = [("ab".to_string(), "cde".to_string())].into();
        assert_eq!(Message::Map(map).len(), 5);
        assert!(Message::from("").is_empty());
    }
}
