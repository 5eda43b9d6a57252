//! How values become journal bytes: a pluggable [`Codec`], and the checked
//! envelope every journaled value is stored in.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BoxError, Error, Slot};

/// Turns values into bytes and back. A workflow picks its codec at compile
/// time with `#[resumable(codec = path::ToCodec)]`; [`Bincode`] is the default.
///
/// The codec's [`NAME`](Codec::NAME) is part of the workflow's fingerprint, so
/// runs journaled with one codec are never decoded with another.
///
/// ```
/// use resumable_runtime::{Bincode, Codec};
/// let bytes = Bincode::encode(&(7u32, "seven")).unwrap();
/// let back: (u32, String) = Bincode::decode(&bytes).unwrap();
/// assert_eq!(back, (7, "seven".to_string()));
/// ```
pub trait Codec: Send + Sync + 'static {
    /// A stable name, stored in the workflow fingerprint.
    const NAME: &'static str;
    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError>;
    /// Decodes a value; the whole of `bytes` must be consumed.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError>;
}

/// bincode 2 (standard configuration) through serde. Decoding refuses to
/// claim more than [`Bincode::DECODE_LIMIT`] bytes, so a corrupted length
/// prefix cannot make it allocate without bound.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Bincode {
    /// The most bytes one decode may claim.
    pub const DECODE_LIMIT: usize = 256 << 20;
}

const BINCODE_CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ Bincode::DECODE_LIMIT }>,
> = bincode::config::standard().with_limit::<{ Bincode::DECODE_LIMIT }>();

impl Codec for Bincode {
    const NAME: &'static str = "bincode2";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(bincode::serde::encode_to_vec(value, BINCODE_CONFIG)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, BINCODE_CONFIG)?;
        if read != bytes.len() {
            return Err(format!("{} trailing bytes after the value", bytes.len() - read).into());
        }
        Ok(value)
    }
}

/// The record format version written in front of every journaled value.
pub const RECORD_VERSION: u8 = 1;
const HEADER: usize = 5;

/// Limits and naming for sealing values into journal records and opening them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope {
    pub max_payload: usize,
}

impl Envelope {
    /// Encodes `value` with `C` and frames it: `[version][crc32 LE][payload]`.
    pub fn seal<C: Codec, T: Serialize + ?Sized>(
        &self,
        run: &str,
        slot: impl Fn() -> Slot,
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        let ty = std::any::type_name::<T>();
        let payload = C::encode(value).map_err(|source| Error::Encode {
            run: run.to_owned(),
            slot: slot(),
            ty,
            source,
        })?;
        self.check_size(run, &slot, payload.len())?;
        let mut header = [RECORD_VERSION, 0, 0, 0, 0];
        header[1..].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        // The payload's own buffer becomes the record: no second allocation.
        let mut record = payload;
        record.splice(0..0, header);
        Ok(record)
    }

    fn check_size(&self, run: &str, slot: &impl Fn() -> Slot, size: usize) -> Result<(), Error> {
        if size > self.max_payload {
            return Err(Error::PayloadTooLarge {
                run: run.to_owned(),
                slot: slot(),
                size,
                limit: self.max_payload,
            });
        }
        Ok(())
    }

    /// Checks a record's frame and decodes its payload as `T`.
    pub fn open<C: Codec, T: DeserializeOwned>(
        &self,
        run: &str,
        slot: impl Fn() -> Slot,
        record: &[u8],
    ) -> Result<T, Error> {
        let corrupted = |slot: Slot, reason: String| Error::Corrupted {
            run: run.to_owned(),
            slot,
            reason,
        };
        if record.len() < HEADER {
            return Err(corrupted(
                slot(),
                format!(
                    "record is {} bytes, shorter than its {HEADER}-byte header",
                    record.len()
                ),
            ));
        }
        if record[0] != RECORD_VERSION {
            return Err(Error::UnknownRecordVersion {
                run: run.to_owned(),
                slot: slot(),
                found: record[0],
                supported: RECORD_VERSION,
            });
        }
        let payload = &record[HEADER..];
        self.check_size(run, &slot, payload.len())?;
        let stored = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
        let actual = crc32fast::hash(payload);
        if stored != actual {
            return Err(corrupted(
                slot(),
                format!("checksum {actual:08x} does not match the stored {stored:08x}"),
            ));
        }
        C::decode(payload).map_err(|source| Error::Decode {
            run: run.to_owned(),
            slot: slot(),
            ty: std::any::type_name::<T>(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: Envelope = Envelope { max_payload: 1024 };

    fn seal(value: &impl Serialize) -> Vec<u8> {
        ENVELOPE
            .seal::<Bincode, _>("r", || Slot::Input, value)
            .unwrap()
    }

    fn open<T: DeserializeOwned>(record: &[u8]) -> Result<T, Error> {
        ENVELOPE.open::<Bincode, T>("r", || Slot::Step("s#0".into()), record)
    }

    #[test]
    fn round_trips() {
        let record = seal(&("a".to_string(), 42u64));
        assert_eq!(
            open::<(String, u64)>(&record).unwrap(),
            ("a".to_string(), 42)
        );
    }

    #[test]
    fn truncated_record_is_corrupted() {
        let record = seal(&"hello".to_string());
        let err = open::<String>(&record[..3]).unwrap_err();
        assert!(
            matches!(err, Error::Corrupted { ref slot, .. } if *slot == Slot::Step("s#0".into())),
            "{err}"
        );
        let err = open::<String>(&record[..record.len() - 1]).unwrap_err();
        assert!(matches!(err, Error::Corrupted { .. }), "{err}");
    }

    #[test]
    fn flipped_bit_is_corrupted() {
        let mut record = seal(&12345u64);
        let last = record.len() - 1;
        record[last] ^= 0x01;
        assert!(matches!(open::<u64>(&record), Err(Error::Corrupted { .. })));
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut record = seal(&1u8);
        record[0] = 9;
        assert!(matches!(
            open::<u8>(&record),
            Err(Error::UnknownRecordVersion { found: 9, .. })
        ));
    }

    #[test]
    fn wrong_type_is_a_decode_error_naming_the_type() {
        let record = seal(&7u8);
        let err = open::<String>(&record).unwrap_err();
        match err {
            Error::Decode { ty, slot, .. } => {
                assert_eq!(ty, "alloc::string::String");
                assert_eq!(slot, Slot::Step("s#0".into()));
            }
            other => panic!("expected Decode, got {other}"),
        }
        // Bytes left over also mean the wrong type.
        let record = seal(&(1u8, 2u8));
        assert!(matches!(open::<u8>(&record), Err(Error::Decode { .. })));
    }

    #[test]
    fn oversized_payloads_are_refused_both_ways() {
        let big = vec![0u8; 2048];
        let err = ENVELOPE
            .seal::<Bincode, _>("r", || Slot::Outcome, &big)
            .unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { size, limit: 1024, .. } if size > 1024));
        let large = Envelope { max_payload: 4096 }
            .seal::<Bincode, _>("r", || Slot::Outcome, &big)
            .unwrap();
        assert!(matches!(
            open::<Vec<u8>>(&large),
            Err(Error::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate_unbounded() {
        // A payload claiming a 2^60-byte string: must fail, not abort on allocation.
        let mut payload = vec![253u8];
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut record = vec![RECORD_VERSION];
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        assert!(matches!(open::<String>(&record), Err(Error::Decode { .. })));
    }
}
