//! How values become journal bytes: a pluggable [`Codec`], and the checked
//! envelope every journaled value is stored in.

mod guard;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(any(feature = "json", feature = "postcard"))]
use self::guard::Guarded;
use self::guard::{GuardedSeed, Limits};
use crate::error::{BoxError, Error, Slot};

/// Turns values into bytes and back. A workflow picks its codec at compile
/// time with `#[resumable(codec = path::ToCodec)]`; [`Bincode`] is the default.
///
/// The codec's [`NAME`](Codec::NAME) is part of the workflow's fingerprint, so
/// runs journaled with one codec are never decoded with another.
///
/// ```
/// use resumable::{Bincode, Codec};
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

    /// Decodes from the record's own bytes, nesting at most 256 levels deep,
    /// with every length prefix of a string or byte buffer checked against
    /// the bytes that follow it before anything is allocated, at most 64
    /// values per byte, and collections taking at most 64 MiB plus 16 bytes
    /// per byte of the record in memory.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
        let limits = Limits::for_payload(bytes.len());
        let seed = GuardedSeed::<T>::new(&limits);
        let (value, read) = bincode::serde::seed_decode_from_slice(seed, bytes, BINCODE_CONFIG)?;
        if read != bytes.len() {
            return Err(format!("{} trailing bytes after the value", bytes.len() - read).into());
        }
        Ok(value)
    }
}

/// JSON through `serde_json` (feature `json`): records a person (or the
/// `resumable` tool) can read without the Rust types. Decoding is guarded as
/// [`Bincode`]'s is.
///
/// ```
/// use resumable::{Codec, Json};
/// let bytes = Json::encode(&(7u32, "seven")).unwrap();
/// assert_eq!(bytes, br#"[7,"seven"]"#);
/// let back: (u32, String) = Json::decode(&bytes).unwrap();
/// assert_eq!(back, (7, "seven".to_string()));
/// ```
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
        let limits = Limits::for_payload(bytes.len());
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = T::deserialize(Guarded::new(&mut de, &limits))?;
        de.end()?;
        Ok(value)
    }
}

#[cfg(feature = "json")]
impl Json {
    /// The value a journaled record holds, as JSON, if the [`Json`] codec
    /// wrote it (`Ok(None)` for another codec): what tools print without
    /// the workflow's types. A record that fails its checks is the same
    /// typed error a workflow would get, naming run `run` and `slot`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{Json, MemoryJournal, Runtime, Slot, resumable, step};
    ///
    /// #[resumable(codec = resumable::Json)]
    /// async fn greet(name: String) -> Result<String, String> {
    ///     Ok(step!("greet", { format!("hello {name}") }))
    /// }
    ///
    /// let journal = std::sync::Arc::new(MemoryJournal::new());
    /// Runtime::new(journal.clone()).run("g", greet("ada".into())).await?.unwrap();
    /// let run = resumable::Journal::load_run(&*journal, "g").await?.unwrap();
    /// let output = run.steps[0].output.as_deref().unwrap();
    /// let value = Json::open_record("g", || Slot::Step("greet#0".into()), output)?;
    /// assert_eq!(value, Some(serde_json::json!("hello ada")));
    /// # Ok(())
    /// # }
    /// ```
    pub fn open_record(
        run: &str,
        slot: impl Fn() -> Slot,
        record: &[u8],
    ) -> Result<Option<serde_json::Value>, Error> {
        if record_codec(record) != Some(Json::NAME) {
            return Ok(None);
        }
        let envelope = Envelope {
            max_payload: usize::MAX,
        };
        envelope
            .open::<Json, serde_json::Value>(run, slot, record)
            .map(Some)
    }
}

/// postcard 1 through serde (feature `postcard`): a compact binary format
/// that is maintained (bincode 2.0.1 is the last release of bincode).
/// Decoding is guarded as [`Bincode`]'s is.
///
/// ```
/// use resumable::{Codec, Postcard};
/// let bytes = Postcard::encode(&(7u32, "seven")).unwrap();
/// let back: (u32, String) = Postcard::decode(&bytes).unwrap();
/// assert_eq!(back, (7, "seven".to_string()));
/// ```
///
/// A workflow chooses it with `#[resumable(codec = resumable::Postcard)]`.
#[cfg(feature = "postcard")]
#[cfg_attr(docsrs, doc(cfg(feature = "postcard")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    const NAME: &'static str = "postcard1";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(postcard::to_allocvec(value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
        let limits = Limits::for_payload(bytes.len());
        let mut de = postcard::Deserializer::from_bytes(bytes);
        let value = T::deserialize(Guarded::new(&mut de, &limits))?;
        let rest = de.finalize()?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes after the value", rest.len()).into());
        }
        Ok(value)
    }
}

/// The record format version written in front of every journaled value.
///
/// Version 2: `[2][crc32 LE of the rest][codec name length][codec name][payload]`,
/// so that every record says which codec wrote it. Version 1 records
/// (`[1][crc32 LE][payload]`, without the codec) are still read.
pub const RECORD_VERSION: u8 = 2;
/// Version byte and checksum.
const HEADER: usize = 5;

/// The name of the codec that wrote `record`, if it is a version 2 record
/// whose frame is intact (the checksum is not verified).
pub(crate) fn record_codec(record: &[u8]) -> Option<&str> {
    if record.first() != Some(&RECORD_VERSION) {
        return None;
    }
    let len = usize::from(*record.get(HEADER)?);
    std::str::from_utf8(record.get(HEADER + 1..HEADER + 1 + len)?).ok()
}

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
        // The codec's name is at most 255 bytes: longer names are cut.
        let name = &C::NAME.as_bytes()[..C::NAME.len().min(255)];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[name.len() as u8]);
        hasher.update(name);
        hasher.update(&payload);
        let mut header = Vec::with_capacity(HEADER + 1 + name.len());
        header.push(RECORD_VERSION);
        header.extend_from_slice(&hasher.finalize().to_le_bytes());
        header.push(name.len() as u8);
        header.extend_from_slice(name);
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
        let checked = &record[HEADER..];
        let payload = match record[0] {
            1 => checked,
            RECORD_VERSION => {
                let len = usize::from(checked[..].first().copied().unwrap_or(0));
                match checked.get(1 + len..) {
                    Some(payload) => payload,
                    None => {
                        let reason =
                            format!("record is {} bytes, shorter than its header", record.len());
                        return Err(corrupted(slot(), reason));
                    }
                }
            }
            found => {
                return Err(Error::UnknownRecordVersion {
                    run: run.to_owned(),
                    slot: slot(),
                    found,
                    supported: RECORD_VERSION,
                });
            }
        };
        self.check_size(run, &slot, payload.len())?;
        let stored = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
        let actual = crc32fast::hash(checked);
        if stored != actual {
            return Err(corrupted(
                slot(),
                format!("checksum {actual:08x} does not match the stored {stored:08x}"),
            ));
        }
        if let Some(journaled) = record_codec(record)
            && journaled != C::NAME
        {
            return Err(Error::CodecMismatch {
                run: run.to_owned(),
                slot: slot(),
                journaled: journaled.to_owned(),
                current: C::NAME,
            });
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

    /// A codec with another name, writing bincode.
    struct Renamed;
    impl Codec for Renamed {
        const NAME: &'static str = "renamed";
        fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
            Bincode::encode(value)
        }
        fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
            Bincode::decode(bytes)
        }
    }

    #[test]
    fn records_name_their_codec_and_another_codec_is_refused() {
        let record = seal(&7u32);
        assert_eq!(record_codec(&record), Some("bincode2"));
        let err = ENVELOPE
            .open::<Renamed, u32>("r", || Slot::Outcome, &record)
            .unwrap_err();
        match &err {
            Error::CodecMismatch {
                journaled, current, ..
            } => {
                assert_eq!((journaled.as_str(), *current), ("bincode2", "renamed"));
                let message = err.to_string();
                assert!(
                    message.contains("bincode2") && message.contains("renamed"),
                    "{message}"
                );
            }
            other => panic!("expected CodecMismatch, got {other}"),
        }
    }

    #[test]
    fn version_1_records_without_a_codec_are_still_read() {
        let payload = Bincode::encode(&("old", 1u8)).unwrap();
        let mut record = vec![1];
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        assert_eq!(record_codec(&record), None);
        assert_eq!(
            open::<(String, u8)>(&record).unwrap(),
            ("old".to_string(), 1)
        );
    }

    /// A recursive type, as a crafted record can nest it.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Node {
        next: Option<Box<Node>>,
    }

    /// `levels` nested `Some`s, then `None`, as bincode encodes a `Node`.
    fn nested(levels: usize) -> Vec<u8> {
        let mut payload = vec![1u8; levels];
        payload.push(0);
        payload
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut record = vec![1];
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        record
    }

    #[test]
    fn deep_nesting_is_a_decode_error_not_a_stack_overflow() {
        // 50,000 levels overflowed the stack (and aborted the process).
        let large = Envelope {
            max_payload: 1 << 20,
        };
        let slot = || Slot::Step("s#0".into());
        let err = large
            .open::<Bincode, Node>("r", slot, &framed(&nested(50_000)))
            .unwrap_err();
        match &err {
            Error::Decode { slot, source, .. } => {
                assert_eq!(slot, &Slot::Step("s#0".into()));
                assert!(source.to_string().contains("256 levels"), "{source}");
            }
            other => panic!("expected Decode, got {other}"),
        }
        // Nesting within the limit decodes.
        let mut node = open::<Node>(&framed(&nested(100))).unwrap();
        let mut depth = 0;
        while let Some(next) = node.next {
            node = *next;
            depth += 1;
        }
        assert_eq!(depth, 100);
    }

    #[test]
    fn a_length_prefix_is_checked_against_the_bytes_that_follow() {
        // 6 bytes claiming a string of 2^28 - 1 bytes, under bincode's own
        // limit: refused before any allocation of that size.
        let mut payload = vec![252u8];
        payload.extend_from_slice(&((1u32 << 28) - 1).to_le_bytes());
        payload.push(b'x');
        assert!(matches!(
            open::<String>(&framed(&payload)),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            open::<Vec<u8>>(&framed(&payload)),
            Err(Error::Decode { .. })
        ));
        // A sequence of 2^40 zero-sized values takes no bytes: refused, not looped over.
        let mut payload = vec![253u8];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = open::<Vec<()>>(&framed(&payload)).unwrap_err();
        assert!(
            err.to_string().contains("more values than its size allows"),
            "{err}"
        );
        // Owned strings and buffers still decode.
        let record = seal(&("text".to_string(), vec![1u8, 2, 3]));
        assert_eq!(
            open::<(String, Vec<u8>)>(&record).unwrap(),
            ("text".to_string(), vec![1, 2, 3])
        );
    }

    #[test]
    fn collections_take_memory_in_proportion_to_the_record() {
        // 4 KiB in memory for each one-byte `None`.
        type Big = Vec<Option<[[u64; 32]; 16]>>;
        fn nones(n: u16) -> Vec<u8> {
            let mut payload = vec![251u8];
            payload.extend_from_slice(&n.to_le_bytes());
            payload.extend(std::iter::repeat_n(0u8, n.into()));
            framed(&payload)
        }
        // A 20 KB record asking for 80 MB: refused.
        let large = Envelope {
            max_payload: 1 << 20,
        };
        let err = large
            .open::<Bincode, Big>("r", || Slot::Step("s#0".into()), &nones(20_000))
            .unwrap_err();
        assert!(
            err.to_string().contains("more memory than its size allows"),
            "{err}"
        );
        // A thousand of them (4 MB) decode.
        let big = large
            .open::<Bincode, Big>("r", || Slot::Step("s#0".into()), &nones(1_000))
            .unwrap();
        assert_eq!(big.len(), 1_000);
    }

    /// Every codec shipped decodes through the same guard.
    #[cfg(all(feature = "json", feature = "postcard"))]
    #[test]
    fn every_codec_is_guarded() {
        let large = Envelope {
            max_payload: 1 << 20,
        };
        let slot = || Slot::Outcome;
        let tree = (String::from("a"), vec![Some(1u8), None], 7u64);
        fn deep<C: Codec>() -> Vec<u8> {
            // 10,000 levels of `Node`, encoded by the codec itself from a
            // hand-built chain (serialising it recursively would be as deep).
            let mut payload = Vec::new();
            for _ in 0..10_000 {
                payload.extend(C::encode(&Some(())).unwrap().into_iter().take(1));
            }
            payload.extend(C::encode(&None::<()>).unwrap());
            payload
        }
        let json_deep = format!("{}null{}", "{\"next\":".repeat(10_000), "}".repeat(10_000));
        let cases: [(&str, Vec<u8>, Vec<u8>); 2] = [
            (
                "json",
                large.seal::<Json, _>("r", slot, &tree).unwrap(),
                json_deep.into_bytes(),
            ),
            (
                "postcard1",
                large.seal::<Postcard, _>("r", slot, &tree).unwrap(),
                deep::<Postcard>(),
            ),
        ];
        for (name, record, deep_payload) in cases {
            assert_eq!(record_codec(&record), Some(name));
            let back = match name {
                "json" => large.open::<Json, (String, Vec<Option<u8>>, u64)>("r", slot, &record),
                _ => large.open::<Postcard, (String, Vec<Option<u8>>, u64)>("r", slot, &record),
            };
            assert_eq!(back.unwrap(), tree, "{name}");
            let mut framed = vec![2];
            let mut checked = vec![name.len() as u8];
            checked.extend_from_slice(name.as_bytes());
            checked.extend_from_slice(&deep_payload);
            framed.extend_from_slice(&crc32fast::hash(&checked).to_le_bytes());
            framed.extend_from_slice(&checked);
            let err = match name {
                "json" => large.open::<Json, Node>("r", slot, &framed).unwrap_err(),
                _ => large
                    .open::<Postcard, Node>("r", slot, &framed)
                    .unwrap_err(),
            };
            assert!(matches!(err, Error::Decode { .. }), "{name}: {err}");
        }
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
        let mut record = vec![1];
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        assert!(matches!(open::<String>(&record), Err(Error::Decode { .. })));
    }
}
