//! Limits on decoding one journaled value, whatever its type: how deeply it
//! nests (a recursive type decoded from a crafted record must not overflow
//! the stack), how many values it holds (a length prefix of a collection of
//! zero-sized values must not make decoding loop for ever), and how much
//! memory its collections take (a few bytes of `None`s decoded into a
//! `Vec<Option<[u8; 4096]>>` must not take gigabytes).
//!
//! [`Guarded`] wraps a serde `Deserializer` and everything it hands out
//! (visitors, sequence and map access, seeds, enum variants), counting
//! depth on the way down, values as they are visited, and the in-memory
//! size of every element a collection stores.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// How deeply a value may nest: every sequence, map, struct, enum variant,
/// `Some` and newtype is a level, so 128 levels of a struct with an
/// optional field take 256 (as deep as `serde_json` allows arrays to nest).
pub(crate) const MAX_DEPTH: usize = 256;

/// What one decode may still do.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Values it may still visit.
    values: Cell<u64>,
    /// Bytes the elements of its collections may still take in memory.
    memory: Cell<u64>,
    /// The payload's size: no collection holds more sized values.
    bytes: usize,
}

/// Memory the collections of any one decoded value may take, beyond
/// [`MEMORY_PER_BYTE`] bytes per byte of the record.
pub(crate) const MEMORY_BASE: u64 = 64 << 20;
/// Memory the collections of a decoded value may take per byte of its record.
pub(crate) const MEMORY_PER_BYTE: u64 = 16;

impl Limits {
    /// The limits for decoding a payload of `bytes` bytes: at most 64
    /// values per byte, and 4,096 more (values of zero-sized types take no
    /// bytes at all); collections whose elements take at most
    /// [`MEMORY_BASE`] + [`MEMORY_PER_BYTE`] × `bytes` in memory.
    pub(crate) fn for_payload(bytes: usize) -> Self {
        Limits {
            values: Cell::new((bytes as u64).saturating_mul(64).saturating_add(4096)),
            memory: Cell::new(
                (bytes as u64)
                    .saturating_mul(MEMORY_PER_BYTE)
                    .saturating_add(MEMORY_BASE),
            ),
            bytes,
        }
    }

    /// Counts one element of type `T` stored in a collection: its size in
    /// memory is what the collection allocates for it, whatever it took in
    /// the record (a `None` of a large type takes one byte there).
    fn store<T, E: de::Error>(&self) -> Result<(), E> {
        let size = std::mem::size_of::<T>() as u64;
        match self.memory.get().checked_sub(size) {
            Some(left) => {
                self.memory.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "the record decodes into more memory than its size allows",
            )),
        }
    }

    fn visit<E: de::Error>(&self) -> Result<(), E> {
        match self.values.get().checked_sub(1) {
            Some(left) => {
                self.values.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "the record holds more values than its size allows",
            )),
        }
    }
}

/// `inner` (a deserializer, visitor, access or seed) under `limits`, with
/// `depth` levels of nesting left.
pub(crate) struct Guarded<'l, T> {
    inner: T,
    limits: &'l Limits,
    depth: usize,
}

impl<'l, T> Guarded<'l, T> {
    pub(crate) fn new(inner: T, limits: &'l Limits) -> Self {
        Guarded {
            inner,
            limits,
            depth: MAX_DEPTH,
        }
    }

    fn wrap<U>(&self, inner: U) -> Guarded<'l, U> {
        Guarded {
            inner,
            limits: self.limits,
            depth: self.depth,
        }
    }

    /// `inner` one level deeper, or an error past [`MAX_DEPTH`].
    fn deeper<U, E: de::Error>(&self, inner: U) -> Result<Guarded<'l, U>, E> {
        match self.depth.checked_sub(1) {
            Some(depth) => Ok(Guarded {
                inner,
                limits: self.limits,
                depth,
            }),
            None => Err(E::custom(format_args!(
                "the record nests more than {MAX_DEPTH} levels deep"
            ))),
        }
    }
}

/// Forwards `deserialize_*` methods, guarding the visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Guarded<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(), deserialize_bool(), deserialize_i8(), deserialize_i16(),
        deserialize_i32(), deserialize_i64(), deserialize_i128(), deserialize_u8(),
        deserialize_u16(), deserialize_u32(), deserialize_u64(), deserialize_u128(),
        deserialize_f32(), deserialize_f64(), deserialize_char(), deserialize_str(),
        deserialize_bytes(), deserialize_option(), deserialize_unit(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str), deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize), deserialize_map(),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(), deserialize_ignored_any(),
    }

    // Owned strings and byte buffers are read as borrowed ones, which the
    // record must hold: a length prefix never allocates more than that.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_bytes(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods of leaf values, counting each.
macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.limits.visit()?;
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Guarded<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool), visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64),
        visit_u128(u128), visit_f32(f32), visit_f64(f64), visit_char(char),
        visit_str(&str), visit_borrowed_str(&'de str), visit_string(String),
        visit_bytes(&[u8]), visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.limits.visit()?;
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.limits.visit()?;
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.limits.visit()?;
        let d = self.deeper(d)?;
        self.inner.visit_some(d)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.limits.visit()?;
        let d = self.deeper(d)?;
        self.inner.visit_newtype_struct(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.limits.visit()?;
        let seq = self.deeper(seq)?;
        self.inner.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.limits.visit()?;
        let map = self.deeper(map)?;
        self.inner.visit_map(map)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.limits.visit()?;
        let data = self.deeper(data)?;
        self.inner.visit_enum(data)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Guarded<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let d = self.wrap(d);
        self.inner.deserialize(d)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Guarded<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.limits.visit()?;
        self.limits.store::<T::Value, _>()?;
        let seed = self.wrap(seed);
        self.inner.next_element_seed(seed)
    }

    /// A length prefix claims at most one value per byte of the record, so
    /// that what a collection sets aside for its values is bounded by the
    /// record's size.
    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|hint| hint.min(self.limits.bytes))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Guarded<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.limits.visit()?;
        self.limits.store::<K::Value, _>()?;
        let seed = self.wrap(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.limits.store::<V::Value, _>()?;
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|hint| hint.min(self.limits.bytes))
    }
}

impl<'de, 'l, A: EnumAccess<'de>> EnumAccess<'de> for Guarded<'l, A> {
    type Error = A::Error;
    type Variant = Guarded<'l, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let (limits, depth) = (self.limits, self.depth);
        let seed = self.wrap(seed);
        let (value, inner) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Guarded {
                inner,
                limits,
                depth,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Guarded<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let seed = self.deeper(seed)?;
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.wrap(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.wrap(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}

/// Decodes a `T` through [`Guarded`]: a seed for decoders that take one.
pub(crate) struct GuardedSeed<'l, T> {
    limits: &'l Limits,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<'l, T> GuardedSeed<'l, T> {
    pub(crate) fn new(limits: &'l Limits) -> Self {
        GuardedSeed {
            limits,
            _type: std::marker::PhantomData,
        }
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for GuardedSeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Guarded::new(d, self.limits))
    }
}
