//! The session-mode wire format (subprotocol [`SUBPROTOCOL`]), as pure functions shared by
//! the server and the Rust client. Plain mode has no format: each WebSocket frame is one
//! message.
//!
//! Every session-mode frame is a binary WebSocket frame:
//!
//! | byte 0 | bytes 1..9 | rest | meaning |
//! |---|---|---|---|
//! | `H` | — | JSON `{"sid":…,"ack":n\|null,"resumed":bool}` | hello: first frame from the server on every connection; `ack` is the server's inbound position |
//! | `O` | seq (u64 BE) | JSON `{"sid":…}` | the session announcement (sequence 0) |
//! | `T` | seq | UTF-8 | a text message |
//! | `B` | seq | bytes | a binary message |
//! | `S` | seq | — | stop: do not reconnect |
//! | `A` | upto (u64 BE) | — | acknowledges every item up to `upto` |
//!
//! Close codes: [`CLOSE_CLOSED`] (the server closed the session; the client may reconnect with
//! a new one) and [`CLOSE_STOPPED`] (the client must not reconnect).

use bytes::{BufMut, Bytes, BytesMut};

/// The `Sec-WebSocket-Protocol` value that selects session mode.
pub const SUBPROTOCOL: &str = "browserver.session.v1";
/// WebSocket close code: the session was closed; reconnecting (with a new session) is fine.
pub const CLOSE_CLOSED: u16 = 4000;
/// WebSocket close code: the session was stopped; do not reconnect.
pub const CLOSE_STOPPED: u16 = 4001;

/// One decoded session-mode frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Server hello: session id, the server's inbound ack position, whether this resumed,
    /// and the resume token.
    Hello {
        /// Session id (a secret).
        sid: String,
        /// Highest client item the server has released, if any.
        ack: Option<u64>,
        /// Whether an existing session was resumed.
        resumed: bool,
        /// The secret to present as `?resume=` when reconnecting (servers before it resumed
        /// by `sid`).
        token: Option<String>,
    },
    /// The session announcement at `seq` (always 0).
    Open {
        /// Sequence number.
        seq: u64,
    },
    /// A text message.
    Text {
        /// Sequence number.
        seq: u64,
        /// The text (valid UTF-8).
        text: Bytes,
    },
    /// A binary message.
    Binary {
        /// Sequence number.
        seq: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Stop at `seq`.
    Stop {
        /// Sequence number.
        seq: u64,
    },
    /// Acknowledges everything up to and including `upto`.
    Ack {
        /// The acknowledged position.
        upto: u64,
    },
}

/// A session-mode frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    #[error("frame too short")]
    Short,
    /// An unknown kind byte.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A text frame that is not UTF-8, or a hello that is not the expected JSON.
    #[error("malformed frame payload")]
    Malformed,
}

fn with_seq(kind: u8, seq: u64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + payload.len());
    b.put_u8(kind);
    b.put_u64(seq);
    b.put_slice(payload);
    b.freeze()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Hello {
    sid: String,
    ack: Option<u64>,
    resumed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// Encodes a frame.
pub fn encode(frame: &Frame) -> Bytes {
    match frame {
        Frame::Hello {
            sid,
            ack,
            resumed,
            token,
        } => {
            let hello = Hello {
                sid: sid.clone(),
                ack: *ack,
                resumed: *resumed,
                token: token.clone(),
            };
            let mut b = vec![b'H'];
            // Serialising a struct of a string, an integer and a bool cannot fail.
            let _ = serde_json::to_writer(&mut b, &hello);
            Bytes::from(b)
        }
        Frame::Open { seq } => with_seq(b'O', *seq, b""),
        Frame::Text { seq, text } => with_seq(b'T', *seq, text),
        Frame::Binary { seq, data } => with_seq(b'B', *seq, data),
        Frame::Stop { seq } => with_seq(b'S', *seq, b""),
        Frame::Ack { upto } => with_seq(b'A', *upto, b""),
    }
}

/// Decodes a frame; never panics, whatever the input.
pub fn decode(frame: &Bytes) -> Result<Frame, DecodeError> {
    let (&kind, rest) = frame.split_first().ok_or(DecodeError::Short)?;
    if kind == b'H' {
        return decode_hello(rest);
    }
    if rest.len() < 8 {
        return Err(if matches!(kind, b'O' | b'T' | b'B' | b'S' | b'A') {
            DecodeError::Short
        } else {
            DecodeError::UnknownKind(kind)
        });
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&rest[..8]);
    let seq = u64::from_be_bytes(seq_bytes);
    let payload = frame.slice(9..);
    match kind {
        b'O' => Ok(Frame::Open { seq }),
        b'T' => {
            std::str::from_utf8(&payload).map_err(|_| DecodeError::Malformed)?;
            Ok(Frame::Text { seq, text: payload })
        }
        b'B' => Ok(Frame::Binary { seq, data: payload }),
        b'S' => Ok(Frame::Stop { seq }),
        b'A' => Ok(Frame::Ack { upto: seq }),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn decode_hello(json: &[u8]) -> Result<Frame, DecodeError> {
    let Hello {
        sid,
        ack,
        resumed,
        token,
    } = serde_json::from_slice(json).map_err(|_| DecodeError::Malformed)?;
    Ok(Frame::Hello {
        sid,
        ack,
        resumed,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Hello {
                sid: "abc-123".into(),
                ack: Some(7),
                resumed: true,
                token: Some("abc-123.secret".into()),
            },
            Frame::Hello {
                sid: "x".into(),
                ack: None,
                resumed: false,
                token: None,
            },
            Frame::Open { seq: 0 },
            Frame::Text {
                seq: 1,
                text: Bytes::from("héllo"),
            },
            Frame::Binary {
                seq: u64::MAX,
                data: Bytes::from_static(&[0, 255, 1]),
            },
            Frame::Stop { seq: 9 },
            Frame::Ack { upto: 42 },
        ];
        for f in frames {
            assert_eq!(decode(&encode(&f)), Ok(f.clone()), "{f:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"T",
            b"T1234567",
            b"Z12345678",
            b"H{",
            b"H{\"sid\":1}",
            b"T\0\0\0\0\0\0\0\x01\xff",
        ] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
