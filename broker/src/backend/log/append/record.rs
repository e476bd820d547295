//! The on-disk record: what is stored, and how one record is framed in a segment file.
//! Callers submit the same type; the writer fills in what only it knows (an event's seq and
//! time, a floor clamped to the seqs it holds) before framing it.
//!
//! Frame: `len: u32 LE | body_crc: u32 LE | header_crc: u32 LE | body[len]`, where
//! `header_crc = crc32(len ‖ body_crc)` and the body is a `codec` body. The header has
//! its own checksum so that a damaged length is recognised as damage instead of being taken
//! for a record that runs past the end of the file (which would look like a torn tail).

use serde::{Deserialize, Serialize};

use crate::backend::log::codec;
use crate::backend::log::settled::SeqRanges;
pub use crate::backend::log::settled::{ConsumerState, Settle};

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

impl Event {
    /// An event to append. The writer gives it its seq (0 until then) and may raise its time
    /// to the newest one stored, so that stored times never go back when the clock does.
    pub fn new(topic: String, payload: String, time_ms: u64, msg_id: Option<String>) -> Event {
        Event {
            seq: 0,
            time_ms,
            topic,
            payload,
            msg_id,
            frame_body: Default::default(),
        }
    }
}

/// Where a new consumer's floor sits.
#[derive(Debug, Clone, Copy)]
pub enum Floor {
    At(u64),
    /// The last seq written before this record: only events published later are for it.
    Head,
}

/// Everything that is ever confirmed to a client is one of these, in the log.
///
/// Variants are encoded by position: new ones go at the end, and a variant is never changed
/// once a release wrote it (the `V1` ones are still read, no longer written).
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
    /// A settle written before settles carried the seek count: its floor always applies.
    AckedV1 {
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
    /// A checkpoint in the first format (acked seqs one by one).
    CheckpointV1 {
        consumers: Vec<(String, LegacyConsumerState)>,
    },
    /// A consumer settled `seqs`; every matching event at or below `floor` is settled, unless
    /// a seek came between (`seeks` is the count the floor was computed under).
    Acked {
        consumer: String,
        seqs: Vec<u64>,
        floor: u64,
        kind: Settle,
        seeks: u64,
    },
    /// Consumers' states, as of this point in the log. Each segment starts with the whole
    /// set, in as many of these as it takes to keep each record under the size limit, so the
    /// state can be rebuilt from the oldest segment retention left.
    Checkpoint {
        consumers: Vec<(String, ConsumerState)>,
    },
    /// A subscriber of the consumer was told of the gap through `to`.
    GapReported {
        name: String,
        to: u64,
    },
    /// An event delivered `max_deliver` times, moved to `event.topic` (`dead.<consumer>`)
    /// and settled as dead-lettered, in one record: a crash keeps both or neither.
    DeadLetter {
        consumer: String,
        seq: u64,
        event: Event,
    },
}

impl Record {
    /// A consumer starting at `start`. The writer clamps every floor it writes to the seqs
    /// it holds, so `Floor::Head` goes in as the highest floor there is and is written as
    /// the last seq before this record.
    pub fn consumer_created(name: String, patterns: Vec<String>, start: Floor) -> Record {
        let floor = match start {
            Floor::At(floor) => floor,
            Floor::Head => u64::MAX,
        };
        Record::ConsumerCreated {
            name,
            patterns,
            floor,
        }
    }

    /// Whether this is a variant kept only to read old logs: never written again.
    pub fn is_legacy(&self) -> bool {
        matches!(self, Record::AckedV1 { .. } | Record::CheckpointV1 { .. })
    }

    /// The events this record stores (a dead letter is one).
    pub fn events(&self) -> &[Event] {
        match self {
            Record::Events(events) => events,
            Record::DeadLetter { event, .. } => std::slice::from_ref(event),
            _ => &[],
        }
    }

    /// The events this record stores, taken out of it.
    pub fn into_events(self) -> Vec<Event> {
        match self {
            Record::Events(events) => events,
            Record::DeadLetter { event, .. } => vec![event],
            _ => Vec::new(),
        }
    }

    pub fn is_checkpoint(&self) -> bool {
        matches!(
            self,
            Record::Checkpoint { .. } | Record::CheckpointV1 { .. }
        )
    }
}

/// A consumer's state as the first format stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyConsumerState {
    pub patterns: Vec<String>,
    pub floor: u64,
    pub acked: std::collections::BTreeSet<u64>,
    pub terminated: u64,
    pub dead_lettered: u64,
    pub gapped: u64,
}

impl From<LegacyConsumerState> for ConsumerState {
    fn from(old: LegacyConsumerState) -> ConsumerState {
        let mut acked = SeqRanges::default();
        for seq in old.acked {
            acked.insert(seq);
        }
        ConsumerState {
            patterns: old.patterns,
            floor: old.floor,
            acked,
            terminated: old.terminated,
            dead_lettered: old.dead_lettered,
            gapped: old.gapped,
            ..ConsumerState::default()
        }
    }
}

/// Why a record was not framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// No reader would accept it: refused before anything is written.
    #[error("record of {0} bytes is over the {MAX_BODY_LEN}-byte limit")]
    TooLarge(usize),
}

/// Appends the framed record to `out`, or leaves `out` as it was and says why not. The size
/// limit readers decode with is checked here too: the writer never writes what no reader
/// accepts.
pub fn frame_into(record: &Record, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = codec::encode_into(record, out) {
        out.truncate(start);
        return Err(e.into());
    }
    let body_len = out.len() - start - HEADER_LEN;
    let len = match u32::try_from(body_len) {
        Ok(len) if body_len <= MAX_BODY_LEN => len,
        _ => {
            out.truncate(start);
            return Err(FrameError::TooLarge(body_len));
        }
    };
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

/// Why a record's body was not accepted: damage, as far as a reader can tell.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record does not decode: {0}")]
    Decode(#[source] codec::CodecError),
}

/// Checks a body against its header and decodes it.
pub fn decode_body(header: &Header, body: &[u8]) -> Result<Record, BodyError> {
    if crc32fast::hash(body) != header.body_crc {
        return Err(BodyError::Checksum);
    }
    codec::decode(body).map_err(BodyError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant, with every field set, for the pinned-bytes test.
    fn every_variant() -> Vec<Record> {
        let event = |seq: u64| Event {
            frame_body: Default::default(),
            seq,
            time_ms: 1_700_000_000_000 + seq,
            topic: "orders.eu".into(),
            payload: "{\"n\":1}".into(),
            msg_id: Some("m-9".into()),
        };
        let mut state = ConsumerState::new(vec!["orders.>".into()], 40);
        state.acked.insert(42);
        state.acked.insert(43);
        state.terminated = 1;
        state.dead_lettered = 2;
        state.gapped = 3;
        state.seeks = 4;
        state.untold_gap = Some((5, 6));
        let legacy = LegacyConsumerState {
            patterns: vec!["a.*".into()],
            floor: 7,
            acked: [9, 11].into_iter().collect(),
            terminated: 1,
            dead_lettered: 0,
            gapped: 2,
        };
        vec![
            Record::Events(vec![event(1), event(2)]),
            Record::ConsumerCreated {
                name: "c".into(),
                patterns: vec!["orders.>".into()],
                floor: 300,
            },
            Record::AckedV1 {
                consumer: "c".into(),
                seqs: vec![1, 2, 300],
                floor: 2,
                kind: Settle::Term,
            },
            Record::ConsumerSeek {
                name: "c".into(),
                floor: 70_000,
            },
            Record::ConsumerDeleted { name: "c".into() },
            Record::ConsumerGap {
                name: "c".into(),
                from: 3,
                to: 9,
            },
            Record::CheckpointV1 {
                consumers: vec![("old".into(), legacy)],
            },
            Record::Acked {
                consumer: "c".into(),
                seqs: vec![5],
                floor: 4,
                kind: Settle::DeadLetter,
                seeks: 2,
            },
            Record::Checkpoint {
                consumers: vec![("c".into(), state)],
            },
            Record::GapReported {
                name: "c".into(),
                to: 9,
            },
            Record::DeadLetter {
                consumer: "c".into(),
                seq: 8,
                event: event(12),
            },
        ]
    }

    /// The framed bytes of [`every_variant`], as released builds wrote them: a change to the
    /// record types that changes them would make old logs unreadable (or misread).
    const PINNED: [&str; 11] = [
            "450000003599abe44fdbfcdb01000201fd0168e5cf8b010000096f72646572732e6575077b226e223a317d01036d2d3902fd0268e5cf8b010000096f72646572732e6575077b226e223a317d01036d2d39",
            "11000000b15b0bb5ba98eb480101016301086f72646572732e3efb2c01",
            "0c0000002b01f3c6d55dea0901020163030102fb2c010201",
            "090000008894eeb5dbd36cd301030163fc70110100",
            "0400000006115153532b258801040163",
            "060000000d04a212cc09a639010501630309",
            "13000000d0b179709c7726db010601036f6c640103612e2a0702090b010002",
            "09000000440d2f023ac1d19a010701630105040202",
            "1a000000f2cefffa9c714bf1010801016301086f72646572732e3e28012a2b01020304010506",
            "05000000d07b84b0e601bcc70109016309",
            "26000000fb0f54a10d69067f010a0163080cfd0c68e5cf8b010000096f72646572732e6575077b226e223a317d01036d2d39",
    ];

    #[test]
    fn every_variant_frames_to_the_bytes_released_builds_wrote() {
        for (rec, pinned) in every_variant().iter().zip(PINNED) {
            let mut buf = Vec::new();
            frame_into(rec, &mut buf).unwrap();
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, pinned, "{rec:?}");
            let header = Header::from_bytes(buf[..HEADER_LEN].try_into().unwrap());
            assert_eq!(&decode_body(&header, &buf[HEADER_LEN..]).unwrap(), rec);
        }
    }

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
