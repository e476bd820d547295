//! The one place that speaks bincode.
//!
//! bincode is unmaintained (3.0.0 is a tombstone that does not compile), so its use is fenced
//! in here: every stored body starts with a format-version byte, and decoding always runs
//! with a size limit so that a corrupt length can never make it allocate without bound.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version byte written in front of every body this build encodes.
pub const FORMAT_VERSION: u8 = 1;

/// No stored body may ask the decoder for more than this.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty body")]
    Empty,
    #[error("format version {0} is not known to this build (it writes {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("undecodable body: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
    #[error("unencodable value: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Appends the version byte and the encoded value to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, out, config())?;
    Ok(())
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a body written by [`encode_into`]; the whole slice must be consumed.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (&version, rest) = body.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(rest, config())?;
    if used != rest.len() {
        return Err(CodecError::Trailing(rest.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let body = encode(&("topic".to_string(), 42u64)).unwrap();
        assert_eq!(body[0], FORMAT_VERSION);
        let back: (String, u64) = decode(&body).unwrap();
        assert_eq!(back, ("topic".to_string(), 42));

        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>(&[9, 1]),
            Err(CodecError::UnknownVersion(9))
        ));
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            decode::<(String, u64)>(&long),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn a_corrupt_length_does_not_allocate() {
        // A string length of u64::MAX must fail cleanly, not try to allocate.
        let mut body = vec![FORMAT_VERSION, 253];
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<String>(&body).is_err());
    }
}
