//! The on-disk record: what is stored, and how one record is framed in a segment file.
//!
//! Frame: `len: u32 LE | body_crc: u32 LE | header_crc: u32 LE | body[len]`, where
//! `header_crc = crc32(len ‖ body_crc)` and the body is a [`crate::codec`] body. The header has
//! its own checksum so that a damaged length is recognised as damage instead of being taken
//! for a record that runs past the end of the file (which would look like a torn tail).

use serde::{Deserialize, Serialize};

use crate::codec;

pub const HEADER_LEN: usize = 12;
/// The largest body a record may have; also the decode limit.
pub const MAX_BODY_LEN: usize = codec::DECODE_LIMIT;

/// One published event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Publish time, ms since the Unix epoch.
    pub time_ms: u64,
    pub topic: String,
    /// The publisher's payload, verbatim JSON text.
    pub payload: String,
    /// The publisher's idempotency key, if it gave one.
    pub msg_id: Option<String>,
    /// The event's frame body, encoded on first delivery and shared by every later one.
    #[serde(skip)]
    pub frame_body: std::sync::OnceLock<wharf_protocol::EventBody>,
}

/// How a consumer settled events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    Ack,
    /// The consumer gave up on them: never redelivered, counted.
    Term,
    /// Delivered `max_deliver` times; moved to the dead-letter topic.
    DeadLetter,
}

/// Everything that is ever confirmed to a client is one of these, in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// One publish or one publish_batch: stored all or none, as one checksummed record.
    Events(Vec<Event>),
    /// A durable consumer came into being; every matching event above `floor` is for it.
    ConsumerCreated {
        name: String,
        patterns: Vec<String>,
        floor: u64,
    },
    /// A consumer settled `seqs`; every matching event at or below `floor` is settled.
    Acked {
        consumer: String,
        seqs: Vec<u64>,
        floor: u64,
        kind: Settle,
    },
    /// A consumer was moved: everything above `floor` is unacked again.
    ConsumerSeek {
        name: String,
        floor: u64,
    },
    ConsumerDeleted {
        name: String,
    },
    /// Retention removed events `from..=to` that the consumer had not settled.
    ConsumerGap {
        name: String,
        from: u64,
        to: u64,
    },
    /// Every consumer's state, as of this point in the log. Written first in each segment,
    /// so the state can be rebuilt from the oldest segment retention left.
    Checkpoint {
        consumers: Vec<(String, crate::state::ConsumerState)>,
    },
}

/// Appends the framed record to `out`.
pub fn frame_into(record: &Record, out: &mut Vec<u8>) -> Result<(), codec::CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    codec::encode_into(record, out)?;
    let body_len = out.len() - start - HEADER_LEN;
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    let body_crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    let header = Header::new(len, body_crc);
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub len: u32,
    pub body_crc: u32,
    pub header_crc: u32,
}

impl Header {
    fn new(len: u32, body_crc: u32) -> Header {
        let mut first = [0u8; 8];
        first[..4].copy_from_slice(&len.to_le_bytes());
        first[4..].copy_from_slice(&body_crc.to_le_bytes());
        Header {
            len,
            body_crc,
            header_crc: crc32fast::hash(&first),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..8].copy_from_slice(&self.body_crc.to_le_bytes());
        b[8..].copy_from_slice(&self.header_crc.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            len: word(0),
            body_crc: word(4),
            header_crc: word(8),
        }
    }

    /// Whether the header's own checksum holds and the length is within bounds.
    pub fn is_valid(&self) -> bool {
        Header::new(self.len, self.body_crc).header_crc == self.header_crc
            && (self.len as usize) <= MAX_BODY_LEN
    }
}

/// Checks a body against its header and decodes it.
pub fn decode_body(header: &Header, body: &[u8]) -> Result<Record, String> {
    if crc32fast::hash(body) != header.body_crc {
        return Err("record checksum mismatch".to_owned());
    }
    codec::decode(body).map_err(|e| format!("record does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_checksums_catch_flips() {
        let rec = Record::Events(vec![Event {
            frame_body: Default::default(),
            seq: 7,
            time_ms: 1,
            topic: "a.b".into(),
            payload: "{\"x\":1}".into(),
            msg_id: Some("m-1".into()),
        }]);
        let mut buf = Vec::new();
        frame_into(&rec, &mut buf).unwrap();
        let header = Header::from_bytes(buf[..HEADER_LEN].try_into().unwrap());
        assert!(header.is_valid());
        assert_eq!(decode_body(&header, &buf[HEADER_LEN..]).unwrap(), rec);

        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(decode_body(&header, &flipped[HEADER_LEN..]).is_err());

        let mut bad_len = buf.clone();
        bad_len[1] ^= 0x01;
        let h = Header::from_bytes(bad_len[..HEADER_LEN].try_into().unwrap());
        assert!(!h.is_valid());
    }
}
